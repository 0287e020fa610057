//! A session's vschema statements: `SHOW VSCHEMA [KEYSPACE k]`, `SHOW VSCHEMA HISTORY`
//! (role `dba` or `admin`), `ALTER VSCHEMA` and `ROLLBACK VSCHEMA` (role `admin`).

use super::{Answered, Session};
use crate::admin::vschema::{apply_edit, keyspace_text, VschemaStatement};
use crate::control::{self, ChangeError, ChangeRequest};
use crate::error::ProxyError;
use crate::vschema::Document;

/// Columns of `SHOW VSCHEMA`.
const SHOW_COLUMNS: [&str; 5] = ["Version", "Author", "Source", "Time", "Document"];
/// Columns of `SHOW VSCHEMA HISTORY`.
const HISTORY_COLUMNS: [&str; 5] = ["Version", "Time", "Author", "Source", "Changes"];
/// Columns of the answer to `ALTER VSCHEMA` and `ROLLBACK VSCHEMA`.
const CHANGE_COLUMNS: [&str; 2] = ["Version", "Change"];

/// How many times a relative edit is redone when another proxy changed the vschema
/// between reading and storing it.
const EDIT_ATTEMPTS: usize = 3;

/// `time_ms` as `YYYY-MM-DD hh:mm:ss.mmm` UTC.
pub(crate) fn utc(time_ms: u64) -> String {
    let secs = time_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        time_ms % 1000
    )
}

/// The MySQL error for a refused change.
pub(crate) fn change_error(e: &ChangeError) -> ProxyError {
    let mut err = ProxyError::unroutable(format!("shardgate: {e}"));
    if matches!(e, ChangeError::Stale { .. } | ChangeError::Store(_)) {
        err.retryable = true;
    }
    err
}

fn bytes(s: impl Into<String>) -> Option<Vec<u8>> {
    Some(s.into().into_bytes())
}

impl Session {
    pub(super) async fn vschema_statement(
        &mut self,
        parsed: Result<VschemaStatement, ProxyError>,
    ) -> Answered {
        let stmt = match parsed {
            Ok(s) => s,
            Err(e) => return self.send_error(&e).await,
        };
        if stmt.changes() && !self.admin {
            let e = ProxyError::admin_statement(
                &self.user,
                "vschema changes (ALTER VSCHEMA, ROLLBACK VSCHEMA)",
            );
            return self.send_error(&e).await;
        }
        if !self.role.runs_migrations() {
            let e = ProxyError::admin_statement(&self.user, "SHOW VSCHEMA");
            return self.send_error(&e).await;
        }
        match stmt {
            VschemaStatement::Show(keyspace) => {
                let Some(cur) = self.shared.plane.current() else {
                    let e = ProxyError::internal("shardgate: the control plane has not started");
                    return self.send_error(&e).await;
                };
                let doc = match Document::parse(&cur.document) {
                    Ok(d) => d.hide_passwords(),
                    Err(e) => {
                        let e = ProxyError::internal(format!(
                            "shardgate: version {} cannot be read: {e}",
                            cur.version
                        ));
                        return self.send_error(&e).await;
                    }
                };
                let text = match &keyspace {
                    None => doc.to_text(),
                    Some(k) => match keyspace_text(&doc, k) {
                        Some(t) => t,
                        None => {
                            let e = ProxyError::unroutable(format!(
                                "shardgate: the vschema has no keyspace {k}"
                            ));
                            return self.send_error(&e).await;
                        }
                    },
                };
                let row = vec![
                    bytes(cur.version.to_string()),
                    bytes(cur.author.clone()),
                    bytes(cur.source.clone()),
                    bytes(utc(cur.time_ms)),
                    bytes(text),
                ];
                self.send_result_set(&SHOW_COLUMNS, vec![row]).await
            }
            VschemaStatement::History(limit) => {
                let got = crate::timer::timeout(
                    control::STORE_DEADLINE,
                    self.shared.plane.topo().history(limit),
                )
                .await;
                match got {
                    Ok(Ok(records)) => {
                        let rows = records
                            .into_iter()
                            .map(|r| {
                                vec![
                                    bytes(r.version.to_string()),
                                    bytes(utc(r.time_ms)),
                                    bytes(r.author),
                                    bytes(r.source),
                                    bytes(r.diff.join("\n")),
                                ]
                            })
                            .collect();
                        self.send_result_set(&HISTORY_COLUMNS, rows).await
                    }
                    Ok(Err(e)) => {
                        self.send_error(&change_error(&ChangeError::Store(e.to_string())))
                            .await
                    }
                    Err(_) => {
                        let e = ChangeError::Store("it did not answer in time".into());
                        self.send_error(&change_error(&e)).await
                    }
                }
            }
            VschemaStatement::Rollback { to, allow_movement } => {
                let r = control::rollback(&self.shared, to, &self.user, allow_movement).await;
                self.change_answer(r).await
            }
            VschemaStatement::Alter {
                edit,
                allow_movement,
            } => {
                if let crate::admin::vschema::Edit::AddPin {
                    keyspace,
                    workspace,
                    ..
                } = &edit
                {
                    let vs = self.shared.vschema();
                    let pinned = vs.keyspace(keyspace).and_then(|k| k.pin_of(*workspace));
                    if let Some((_, false)) = pinned {
                        let e = ProxyError::unroutable(format!(
                            "shardgate: workspace {workspace} is pinned in keyspace {keyspace}'s pin directory; change it with PIN WORKSPACE or UNPIN WORKSPACE"
                        ));
                        return self.send_error(&e).await;
                    }
                }
                let mut last = None;
                for _ in 0..EDIT_ATTEMPTS {
                    let Some(cur) = self.shared.plane.current() else {
                        break;
                    };
                    let mut doc = match Document::parse(&cur.document) {
                        Ok(d) => d,
                        Err(e) => {
                            let e = ProxyError::internal(format!(
                                "shardgate: version {} cannot be read: {e}",
                                cur.version
                            ));
                            return self.send_error(&e).await;
                        }
                    };
                    if let Err(m) = apply_edit(&mut doc, &edit) {
                        return self
                            .send_error(&ProxyError::unroutable(format!("shardgate: {m}")))
                            .await;
                    }
                    let r = control::change(
                        &self.shared,
                        ChangeRequest {
                            author: self.user.clone(),
                            source: "sql",
                            document: doc.to_text(),
                            expected: Some(cur.version),
                            allow_movement,
                            note: None,
                        },
                    )
                    .await;
                    match r {
                        // Another proxy changed it meanwhile: catch up and redo the edit.
                        Err(ChangeError::Stale { .. }) => {
                            control::catch_up(&self.shared).await;
                            last = Some(r);
                        }
                        r => return self.change_answer(r).await,
                    }
                }
                match last {
                    Some(r) => self.change_answer(r).await,
                    None => {
                        let e =
                            ProxyError::internal("shardgate: the control plane has not started");
                        self.send_error(&e).await
                    }
                }
            }
        }
    }

    async fn change_answer(&mut self, r: Result<control::Applied, ChangeError>) -> Answered {
        match r {
            Ok(a) => {
                let lines = if a.diff.is_empty() {
                    vec!["no change".to_string()]
                } else {
                    a.diff
                };
                let rows = lines
                    .into_iter()
                    .map(|l| vec![bytes(a.version.to_string()), bytes(l)])
                    .collect();
                self.send_result_set(&CHANGE_COLUMNS, rows).await
            }
            Err(e) => self.send_error(&change_error(&e)).await,
        }
    }
}
