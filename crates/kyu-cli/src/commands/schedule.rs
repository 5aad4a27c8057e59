//! `kyu schedule set|list|show|delete`.

use std::process::ExitCode;

use kyu_core::{JobSpec, Limits, Schedule, ScheduleSpec};
use kyu_store::{ScheduleList, SchedulePutParams, Store};

use crate::args::ScheduleCommand;
use crate::error::CliError;
use crate::output;

pub async fn schedule<S: Store>(store: &S, c: ScheduleCommand, json: bool) -> Result<ExitCode, CliError> {
    match c {
        ScheduleCommand::Set { name, cron, timezone, queue, kind, payload, catchup, disabled } => {
            let payload = match payload {
                Some(p) => serde_json::from_str(&p).map_err(|e| CliError::Usage(format!("payload is not valid JSON: {e}")))?,
                None => serde_json::Value::Null,
            };
            let spec = ScheduleSpec { cron, timezone: Some(timezone), job: JobSpec::new(&queue, &kind, payload), catchup, enabled: !disabled };
            let now = store.clock().now();
            let parsed = spec.check(&name, now, &Limits::default())?;
            let next_run_at = if spec.enabled { parsed.next_after(now) } else { None };
            let s = store.schedule_put(SchedulePutParams { name, spec, next_run_at }).await?;
            if json { output::json(&s) } else { show(&s) }
        }
        ScheduleCommand::List => {
            let schedules = store.schedule_list().await?;
            if json {
                output::json(&ScheduleList { schedules });
            } else if schedules.is_empty() {
                println!("no schedules");
            } else {
                let rows: Vec<Vec<String>> = schedules
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.cron.clone(),
                            s.timezone.clone(),
                            format!("{}/{}", s.job.queue.as_deref().unwrap_or("default"), s.job.kind),
                            if s.enabled { "yes".into() } else { "no".into() },
                            s.next_run_at.map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                            s.last_run_at.map_or_else(|| "-".into(), |t| t.to_rfc3339()),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "CRON", "TIMEZONE", "JOB", "ENABLED", "NEXT", "LAST"], &rows);
            }
        }
        ScheduleCommand::Show { name } => {
            let s = store.schedule_get(&name).await?.ok_or_else(|| CliError::refused("not_found", format!("schedule `{name}` not found")))?;
            if json { output::json(&s) } else { show(&s) }
        }
        ScheduleCommand::Delete { name } => {
            store.schedule_delete(&name).await?;
            println!("{name}: deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(s: &Schedule) {
    println!("{:<12}{}", "name", s.name);
    println!("{:<12}{} ({})", "cron", s.cron, s.timezone);
    println!("{:<12}{}", "job", serde_json::to_string(&s.job).expect("JSON"));
    println!("{:<12}{}", "enabled", s.enabled);
    println!("{:<12}{}", "catchup", s.catchup);
    println!("{:<12}{}", "next_run_at", s.next_run_at.map_or_else(|| "-".into(), |t| t.to_rfc3339()));
    println!("{:<12}{}", "last_run_at", s.last_run_at.map_or_else(|| "-".into(), |t| t.to_rfc3339()));
}
