//! openraft's storage conformance suite, run unmodified against the ringcask log store and
//! state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use ringcask_raft::{LogStore, StateMachine, TypeConfig};
use tempfile::TempDir;

struct Builder;

fn err(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, e)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(err)?;
        let log = LogStore::open(dir.path().join("log")).await.map_err(err)?;
        let sm = StateMachine::open(dir.path().join("sm"))
            .await
            .map_err(err)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).await.expect("suite");
}
