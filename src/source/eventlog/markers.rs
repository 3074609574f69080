//! The completion markers the History Server reads: `appstatus_<app>.inprogress` while the
//! application runs, `appstatus_<app>` once its log is whole (or at once, EMR's way).

use super::*;

/// What EMR's sidecar writes into `appstatus_<app>` (`echo " "`).
const EMR_APPSTATUS_BODY: &[u8] = b" \n";

impl EventLogSource {
    fn status_key(prefix: &str, app: &str, in_progress: bool) -> String {
        let suffix = if in_progress { IN_PROGRESS } else { "" };
        join_key(prefix, &format!("{ROLLING_PREFIX}{app}/appstatus_{app}{suffix}"))
    }

    /// The marker that says "started": `.inprogress` (at_end) or the final one (at_start, EMR).
    pub(super) fn start_markers(&mut self, store: &mut ChunkStore, now_ms: i64) -> Result<(), TailError> {
        for (app, a) in &self.apps {
            // A mirrored single file says "in progress" by its own name.
            if a.layout == Layout::Single && a.way == Way::Mirror {
                continue;
            }
            for &o in &self.routes {
                let prefix = store.output_path(o).to_string();
                match self.appstatus {
                    AppStatusMode::AtStart => {
                        let key = Self::status_key(&prefix, app, false);
                        store.add_marker(o, app, key, EMR_APPSTATUS_BODY, Vec::new(), now_ms)?;
                    }
                    AppStatusMode::AtEnd => {
                        let done = Self::status_key(&prefix, app, false);
                        if !a.complete && !store.marker_queued(o, &done) {
                            let key = Self::status_key(&prefix, app, true);
                            store.add_marker(o, app, key, b"", Vec::new(), now_ms)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Queues `appstatus_<app>` (and the removal of the `.inprogress` marker) for applications
    /// Spark finished, once everything of them is queued and ends at a line end.
    pub(super) fn end_markers(&mut self, store: &mut ChunkStore, now_ms: i64) -> Result<(), TailError> {
        if self.appstatus != AppStatusMode::AtEnd {
            return Ok(());
        }
        let tail_files = self.tail.read_to_line_end();
        for (app, a) in &mut self.apps {
            if !a.complete || (a.layout == Layout::Single && a.way == Way::Mirror) {
                continue;
            }
            let ready = match a.way {
                Way::Rechunk => {
                    let mine: Vec<_> = tail_files.iter().filter(|(_, tag, _)| tag == app).collect();
                    !mine.is_empty()
                        && mine
                            .iter()
                            .all(|(p, _, done)| *done && !p.to_string_lossy().ends_with(IN_PROGRESS))
                }
                Way::Mirror => self.mirrored.iter().filter(|m| &m.app == app).all(|m| {
                    let size = m.file.metadata().map(|x| x.len()).unwrap_or(u64::MAX);
                    m.uploaded_len == size
                        && m.uploaded_rel.as_deref() == Some(m.rel.as_str())
                        && (m.compressed || ends_with_newline(&m.file, size))
                }),
            };
            if !ready {
                let read_all = match a.way {
                    Way::Rechunk => false,
                    Way::Mirror => self
                        .mirrored
                        .iter()
                        .filter(|m| &m.app == app)
                        .all(|m| m.file.metadata().is_ok_and(|x| x.len() == m.uploaded_len)),
                };
                if read_all && !a.warned_torn {
                    tracing::warn!(app = %app, "Spark marked the log complete but a file ends inside a line; it stays \"in progress\"");
                    a.warned_torn = true;
                }
                continue;
            }
            for &o in &self.routes {
                let prefix = store.output_path(o).to_string();
                let key = Self::status_key(&prefix, app, false);
                if store.marker_queued(o, &key) {
                    continue;
                }
                store.seal_tag(o, app);
                let stale = vec![Self::status_key(&prefix, app, true)];
                if store.add_marker(o, app, key.clone(), b"", stale, now_ms)? {
                    tracing::info!(%key, "application complete: completion marker queued after its last data");
                }
            }
        }
        Ok(())
    }
}
