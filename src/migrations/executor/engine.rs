//! The seam between the executor and the copy engine: the executor runs copies
//! through [`CopyEngine`], which is [`OnlineCopy`] (the real engine in
//! [`crate::migrations::copy`]) everywhere but in tests that need a stand-in.

use std::future::Future;
use std::pin::Pin;

use super::control::MigrationControl;
use crate::migrations::copy::{self, CopyError, CopyOptions, CopyProgress, CopyTask};
use crate::migrations::store::MigrationRow;
use crate::migrations::strategy;
use crate::vschema::Cluster;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the executor needs of a copy engine.
pub trait CopyEngine: Send + Sync + 'static {
    /// The copy task for a queued row, or why it cannot be copied.
    fn task(&self, row: &MigrationRow) -> Result<CopyTask, String>;
    /// Runs or resumes (from `resume`) a copy; see [`copy::run`].
    fn run<'a>(
        &'a self,
        cluster: &'a Cluster,
        task: &'a CopyTask,
        resume: Option<&'a str>,
        control: &'a MigrationControl,
    ) -> BoxFuture<'a, Result<CopyProgress, CopyError>>;
    /// Removes what a stopped copy left; see [`copy::clean_up`].
    fn clean_up<'a>(
        &'a self,
        cluster: &'a Cluster,
        task: &'a CopyTask,
    ) -> BoxFuture<'a, Result<(), CopyError>>;
    /// The table that keeps the old data after a cut-over; see [`copy::old_table_name`].
    fn old_table_name(&self, task: &CopyTask) -> String;
}

/// The online copy-table engine of [`crate::migrations::copy`].
#[derive(Debug, Clone, Default)]
pub struct OnlineCopy {
    /// Knobs passed to every copy.
    pub options: CopyOptions,
}

impl CopyEngine for OnlineCopy {
    fn task(&self, row: &MigrationRow) -> Result<CopyTask, String> {
        let alter = strategy::parse_alter(&row.spec.statement).ok_or_else(|| {
            format!(
                "not an ALTER TABLE the copy engine can run: {}",
                row.spec.statement
            )
        })?;
        Ok(CopyTask {
            uuid: row.spec.uuid.clone(),
            database: row.spec.database.clone(),
            table: row.spec.table.clone(),
            spec: alter.spec,
            options: self.options.clone(),
        })
    }

    fn run<'a>(
        &'a self,
        cluster: &'a Cluster,
        task: &'a CopyTask,
        resume: Option<&'a str>,
        control: &'a MigrationControl,
    ) -> BoxFuture<'a, Result<CopyProgress, CopyError>> {
        Box::pin(copy::run(cluster, task, resume, control))
    }

    fn clean_up<'a>(
        &'a self,
        cluster: &'a Cluster,
        task: &'a CopyTask,
    ) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(copy::clean_up(cluster, task))
    }

    fn old_table_name(&self, task: &CopyTask) -> String {
        copy::old_table_name(task)
    }
}
