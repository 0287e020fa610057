//! Schema changes and the admin surface, as seen from a session: application DDL goes
//! into the migration queue (answered with its uuid, or with its outcome under
//! `@@ddl_wait`), and admin users' statements go to [`crate::admin`].

use super::{Answered, Session};
use crate::error::ProxyError;
use crate::migrations::Strategy;
use crate::planner::StatementPlan;
use crate::protocol::wire::OkInfo;
use crate::vschema::VSchema;

impl Session {
    /// `SET @@ddl_wait`, `@@ddl_strategy`, `@@ddl_postpone_completion`: shardgate's
    /// own session settings.
    pub(super) async fn ddl_setting(
        &mut self,
        setting: Result<crate::ddl::DdlSetting, ProxyError>,
    ) -> Answered {
        match setting {
            Ok(crate::ddl::DdlSetting::Wait(d)) => {
                self.ddl.wait = (!d.is_zero()).then_some(d);
                self.send_ok(OkInfo::default()).await
            }
            Ok(crate::ddl::DdlSetting::Strategy(Some(Strategy::Direct)))
                if !self.role.runs_migrations() =>
            {
                let e = ProxyError::migrations_role(&self.user, self.role.name());
                self.send_error(&e).await
            }
            Ok(crate::ddl::DdlSetting::Strategy(s)) => {
                self.ddl.strategy = s;
                self.send_ok(OkInfo::default()).await
            }
            Ok(crate::ddl::DdlSetting::PostponeCompletion(on)) => {
                self.ddl.postpone = on;
                self.send_ok(OkInfo::default()).await
            }
            Err(e) => self.send_error(&e).await,
        }
    }

    /// Queues a schema change; answers with its uuid, or (with `@@ddl_wait`) with its
    /// outcome.
    pub(super) async fn queue_ddl(
        &mut self,
        vs: &VSchema,
        stmt: &StatementPlan,
        text: &str,
    ) -> Answered {
        let uuid = crate::ddl::new_uuid();
        let mut rows = match crate::ddl::rows_for(
            &self.shared.control,
            vs,
            &self.ctx,
            stmt.qualified_schema.as_deref(),
            text,
            &uuid,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return self.send_error(&e).await,
        };
        for r in &mut rows {
            // Only a change that could be copied can be forced to a copy.
            if let Some(forced) = self.ddl.strategy {
                if forced == Strategy::Direct || r.strategy != Strategy::Direct {
                    r.strategy = forced;
                }
            }
            r.postpone_completion = self.ddl.postpone && r.strategy == Strategy::Copy;
        }
        if let Err(e) = crate::ddl::enqueue(&self.shared.control, vs, &rows).await {
            return self.send_error(&e).await;
        }
        tracing::info!(session = self.id, %uuid, targets = rows.len(), "schema change queued");
        let Some(limit) = self.ddl.wait else {
            let strategy = rows.first().map(|r| r.strategy.as_str()).unwrap_or("");
            let row = vec![
                Some(uuid.into_bytes()),
                Some(strategy.as_bytes().to_vec()),
                Some(rows.len().to_string().into_bytes()),
            ];
            return self
                .send_result_set(&["uuid", "strategy", "targets"], vec![row])
                .await;
        };
        match crate::ddl::wait(&self.shared.control, vs, &rows, limit).await {
            Ok((crate::migrations::Status::Complete, _)) => self.send_ok(OkInfo::default()).await,
            Ok((status, message)) => {
                let why = match (status, message) {
                    (crate::migrations::Status::Failed, Some(m)) => format!("failed: {m}"),
                    (s, _) if s.is_final() => s.as_str().to_string(),
                    (s, _) => format!(
                        "still {} after {:?} (ddl_wait); it goes on: SHOW MIGRATIONS LIKE '{uuid}'",
                        s.as_str(),
                        limit
                    ),
                };
                self.send_error(&ProxyError::unroutable(format!(
                    "shardgate: migration {uuid} {why}"
                )))
                .await
            }
            Err(e) => self.send_error(&e).await,
        }
    }

    /// The answer to `DRAIN`/`UNDRAIN CLUSTER`: one row, the cluster and what happened.
    async fn traffic_answer(&mut self, cluster: &str, r: Result<String, ProxyError>) -> Answered {
        match r {
            Ok(message) => {
                let row = vec![
                    Some(cluster.as_bytes().to_vec()),
                    Some(message.into_bytes()),
                ];
                self.send_result_set(&["Cluster", "Message"], vec![row])
                    .await
            }
            Err(e) => self.send_error(&e).await,
        }
    }

    pub(super) async fn admin_statement(
        &mut self,
        vs: &VSchema,
        parsed: Result<crate::admin::AdminStatement, ProxyError>,
    ) -> Answered {
        let needs_admin = parsed.as_ref().is_ok_and(|s| s.needs_admin());
        if needs_admin && !self.admin {
            let class = parsed.as_ref().map_or("", |s| s.admin_class());
            let e = ProxyError::admin_statement(&self.user, class);
            return self.send_error(&e).await;
        }
        if !self.role.runs_migrations() {
            let e = ProxyError::migrations_role(&self.user, self.role.name());
            return self.send_error(&e).await;
        }
        match parsed {
            Ok(crate::admin::AdminStatement::ShowClusters) => {
                let rows = crate::admin::traffic::show_clusters(&self.shared);
                self.send_result_set(&crate::admin::traffic::CLUSTER_COLUMNS, rows)
                    .await
            }
            Ok(crate::admin::AdminStatement::ShowWorkspace {
                workspace,
                keyspace,
            }) => {
                use crate::admin::workspaces as ws;
                match ws::show_workspace(&self.shared, workspace, keyspace.as_deref()) {
                    Ok(rows) => self.send_result_set(&ws::WORKSPACE_COLUMNS, rows).await,
                    Err(e) => self.send_error(&e).await,
                }
            }
            Ok(crate::admin::AdminStatement::ShowWorkspacesWithErrors) => {
                use crate::admin::workspaces as ws;
                let rows = ws::show_workspaces_with_errors(&self.shared);
                self.send_result_set(&ws::ERROR_COLUMNS, rows).await
            }
            Ok(crate::admin::AdminStatement::Drain { cluster, wait }) => {
                let r =
                    crate::admin::traffic::drain(&self.shared, &cluster, wait, &self.user).await;
                self.traffic_answer(&cluster, r).await
            }
            Ok(crate::admin::AdminStatement::Failover { cluster, to }) => {
                let r = crate::traffic::failover::failover(
                    &self.shared,
                    &cluster,
                    to.as_deref(),
                    crate::traffic::failover::Kind::Planned,
                    &self.user,
                )
                .await
                .map(|rec| {
                    format!(
                        "cluster {cluster} failed over from {} to {} in {:.2} s; {} statement(s) buffered",
                        rec.from,
                        rec.to,
                        rec.steps.last().map_or(0.0, |s| s.0),
                        rec.buffered
                    )
                });
                self.traffic_answer(&cluster, r).await
            }
            Ok(crate::admin::AdminStatement::ShowFailovers) => {
                let rows = crate::admin::traffic::show_failovers(&self.shared);
                self.send_result_set(&crate::admin::traffic::FAILOVER_COLUMNS, rows)
                    .await
            }
            Ok(crate::admin::AdminStatement::Undrain { cluster }) => {
                let r = crate::admin::traffic::undrain(&self.shared, &cluster, &self.user).await;
                self.traffic_answer(&cluster, r).await
            }
            Ok(crate::admin::AdminStatement::Pin(stmt)) => {
                use crate::admin::pins;
                match pins::pin(&self.shared, &self.user, &stmt).await {
                    Ok(row) => self.send_result_set(&pins::CHANGE_COLUMNS, vec![row]).await,
                    Err(e) => self.send_error(&e).await,
                }
            }
            Ok(crate::admin::AdminStatement::ShowPins { keyspace, limit }) => {
                use crate::admin::pins;
                match pins::show_pins(&self.shared, keyspace.as_deref(), limit) {
                    Ok(rows) => self.send_result_set(&pins::PIN_COLUMNS, rows).await,
                    Err(e) => self.send_error(&e).await,
                }
            }
            Err(e) => self.send_error(&e).await,
            Ok(crate::admin::AdminStatement::ShowMigrations(pattern)) => {
                match crate::admin::show_migrations(&self.shared.control, vs, pattern.as_deref())
                    .await
                {
                    Ok((cols, rows)) => self.send_result_set(&cols, rows).await,
                    Err(e) => self.send_error(&e).await,
                }
            }
            Ok(crate::admin::AdminStatement::AlterMigration { target, request }) => {
                match crate::admin::alter_migration(&self.shared.control, vs, &target, request)
                    .await
                {
                    Ok(n) => {
                        self.send_ok(OkInfo {
                            affected_rows: n,
                            ..OkInfo::default()
                        })
                        .await
                    }
                    Err(e) => self.send_error(&e).await,
                }
            }
        }
    }
}
