//! Periodic tasks: a schedule's definition (a cron expression in a time zone, a
//! queue, a task template, what to do with ticks missed while nothing ran), when
//! it fires, and the loop every server runs to fire them.
//!
//! Exactly once per tick with many servers: every server may fire a due tick; the
//! task it enqueues carries the idempotency key `schedule:<name>:<tick ms>`, so
//! the store makes one task of all of them, and each then records the tick as
//! handled (`Broker::schedule_ran`, which only moves forward), so no server
//! fires it again. A crash between the two fires the tick again, into the same
//! task while it is retained.
//!
//! May not: keep schedules of its own (the store holds them, so every server
//! agrees), or enqueue without the tick's idempotency key.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use weir_core::validate::{self, InvalidInput};
use weir_core::TaskId;
use weir_store::{Broker, EnqueueTask, Schedule, StoreError};

use crate::api::now_ms;
use crate::ServeConfig;

/// A tick found due no later than this after its time fires whatever `missed`
/// says; an older one was missed (everything was down, or the store was).
pub const SCHEDULE_LATE_MS_MAX: u64 = 10_000;
/// Longest the loop sleeps before it reads the schedules again (another server
/// may have added one).
pub const SCHEDULER_SLEEP_MS_MAX: u64 = 1_000;

/// What a schedule does about ticks missed while no server ran it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Missed ticks are dropped; the schedule goes on with the next one.
    #[default]
    Skip,
    /// However many ticks were missed, one task runs for them, at once.
    RunOnce,
}

/// `PUT /v1/schedules/{name}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody<'a> {
    /// Five fields, or six with a leading seconds field (`*/5 * * * *`).
    pub cron: String,
    /// An IANA time zone (default `UTC`).
    #[serde(default)]
    pub tz: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub queue: String,
    /// The task each tick enqueues: an enqueue body without `idempotency_key`,
    /// `run_at` or `deadline`.
    #[serde(borrow)]
    #[schema(value_type = crate::wire::EnqueueBody)]
    pub task: &'a RawValue,
    #[serde(default)]
    pub missed: Option<Missed>,
}

/// A definition as the store keeps it (`Schedule::spec`): the body, checked and
/// with its defaults filled in.
#[derive(Serialize, Deserialize)]
struct Spec {
    cron: String,
    tz: String,
    queue: String,
    task: Box<RawValue>,
    missed: Missed,
}

/// A definition ready to use: its expression and zone parsed.
pub struct Compiled {
    spec: Spec,
    cron: Cron,
    tz: chrono_tz::Tz,
}

/// The API's view of a schedule.
#[derive(Serialize, ToSchema)]
pub struct ScheduleJson {
    pub name: String,
    pub cron: String,
    pub tz: String,
    pub queue: String,
    #[schema(value_type = crate::wire::EnqueueBody)]
    pub task: Box<RawValue>,
    pub missed: Missed,
    #[schema(format = DateTime)]
    pub next_run_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_run_at: Option<String>,
    pub last_task_id: Option<String>,
}

/// Parses a cron expression: 5 fields, or 6 with a leading seconds field.
fn parse_cron(text: &str) -> Result<Cron, InvalidInput> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|e| InvalidInput::invalid("cron", format!("is not a cron expression: {e}")))
}

impl Compiled {
    /// Checks a `PUT` body: the expression, the zone (default UTC), the queue and
    /// the task template (an enqueue body without `idempotency_key`, `run_at` or
    /// `deadline`: those belong to one task, not to every tick's). Answers the
    /// definition and its text for the store.
    pub fn from_body(
        body: ScheduleBody<'_>,
        config: &ServeConfig,
        now_ms: u64,
    ) -> Result<(Compiled, String), InvalidInput> {
        let cron = parse_cron(&body.cron)?;
        let tz_name = body.tz.unwrap_or_else(|| "UTC".to_owned());
        let tz = chrono_tz::Tz::from_str(&tz_name).map_err(|_| {
            InvalidInput::invalid("tz", format!("{tz_name:?} is not an IANA time zone"))
        })?;
        validate::queue_name(&body.queue, &config.limits)?;
        let task = body.task.to_owned();
        let spec = Spec {
            cron: body.cron,
            tz: tz_name,
            queue: body.queue,
            task,
            missed: body.missed.unwrap_or_default(),
        };
        let compiled = Compiled { spec, cron, tz };
        // The template must make a valid task now, as it will at every tick.
        let template: crate::wire::EnqueueBody = serde_json::from_str(compiled.spec.task.get())
            .map_err(|e| InvalidInput::invalid("task", e.to_string()))?;
        for (field, set) in [
            ("task.idempotency_key", template.idempotency_key.is_some()),
            ("task.run_at", template.run_at.is_some()),
            ("task.deadline", template.deadline.is_some()),
        ] {
            if set {
                return Err(InvalidInput::invalid(
                    field,
                    "belongs to one task; a schedule's tasks cannot carry it",
                ));
            }
        }
        compiled.task(config, "check", 0, now_ms)?;
        if compiled.next_after(now_ms).is_none() {
            return Err(InvalidInput::invalid("cron", "never fires"));
        }
        let text = serde_json::to_string(&compiled.spec).expect("a spec serializes");
        Ok((compiled, text))
    }

    /// A definition the store holds.
    pub fn from_store(spec: &str) -> Result<Compiled, String> {
        let spec: Spec = serde_json::from_str(spec).map_err(|e| e.to_string())?;
        let cron = parse_cron(&spec.cron).map_err(|e| e.to_string())?;
        let tz = chrono_tz::Tz::from_str(&spec.tz).map_err(|e| e.to_string())?;
        Ok(Compiled { spec, cron, tz })
    }

    /// `ms` in the schedule's zone, to the whole second (cron's finest unit).
    fn at(&self, ms: u64) -> Option<DateTime<chrono_tz::Tz>> {
        self.tz.timestamp_opt((ms / 1000) as i64, 0).single()
    }

    /// The first tick strictly after `ms`.
    pub fn next_after(&self, ms: u64) -> Option<u64> {
        let t = self.cron.find_next_occurrence(&self.at(ms)?, false).ok()?;
        u64::try_from(t.with_timezone(&Utc).timestamp_millis()).ok()
    }

    /// The last tick at or before `ms`.
    fn latest_at_or_before(&self, ms: u64) -> Option<u64> {
        let t = self
            .cron
            .find_previous_occurrence(&self.at(ms)?, true)
            .ok()?;
        u64::try_from(t.with_timezone(&Utc).timestamp_millis()).ok()
    }

    /// What is due at `now_ms` after the tick `last_tick_ms`: `None`, or the tick to
    /// handle and whether it enqueues. Only the latest due tick is handled: a
    /// fresh one (at most `SCHEDULE_LATE_MS_MAX` old) fires; an older one was
    /// missed and fires only under `run_once`. Either way the ticks before it are
    /// handled with it (never fired one by one).
    pub fn due(&self, last_tick_ms: u64, now_ms: u64) -> Option<(u64, bool)> {
        let next = self.next_after(last_tick_ms)?;
        if next > now_ms {
            return None;
        }
        let tick = self.latest_at_or_before(now_ms)?.max(next);
        let fresh = now_ms - tick <= SCHEDULE_LATE_MS_MAX;
        Some((tick, fresh || self.spec.missed == Missed::RunOnce))
    }

    /// The task of the tick `tick_ms`.
    fn task(
        &self,
        config: &ServeConfig,
        name: &str,
        tick_ms: u64,
        now_ms: u64,
    ) -> Result<EnqueueTask, InvalidInput> {
        let bytes = Bytes::copy_from_slice(self.spec.task.get().as_bytes());
        let body: crate::wire::EnqueueBody = serde_json::from_slice(&bytes)
            .map_err(|e| InvalidInput::invalid("task", e.to_string()))?;
        let mut task = crate::api::new_task(&bytes, body, config, now_ms)?;
        task.task.idempotency_key = Some(format!("schedule:{name}:{tick_ms}"));
        Ok(task)
    }

    /// The API's view of `s`, its next run judged at `now_ms`.
    pub fn view(&self, s: &Schedule, now_ms: u64) -> ScheduleJson {
        let next = self
            .next_after(s.last_tick_ms.max(now_ms.saturating_sub(1)))
            .map(crate::wire::rfc3339);
        ScheduleJson {
            name: s.name.clone(),
            cron: self.spec.cron.clone(),
            tz: self.spec.tz.clone(),
            queue: self.spec.queue.clone(),
            task: self.spec.task.clone(),
            missed: self.spec.missed,
            next_run_at: next,
            last_run_at: s.last_run_ms.map(crate::wire::rfc3339),
            last_task_id: s.last_task_id.map(|t| t.to_string()),
        }
    }
}

/// Fires every schedule due at `now_ms` and records each handled tick. Answers
/// when the next tick of any schedule is due. A schedule whose definition does
/// not parse (written by a newer server, say) is logged and left alone.
pub async fn fire_due(
    broker: &dyn Broker,
    config: &ServeConfig,
    now_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let mut next: Option<u64> = None;
    for s in broker.schedules().await? {
        let compiled = match Compiled::from_store(&s.spec) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(schedule = %s.name, error = %e, "a schedule's definition does not parse; it does not fire");
                continue;
            }
        };
        let mut handled = s.last_tick_ms;
        if let Some((tick, fire)) = compiled.due(s.last_tick_ms, now_ms) {
            if !fire {
                tracing::info!(schedule = %s.name, tick_ms = tick, "skipped missed ticks");
                broker.schedule_ran(&s.name, tick, None).await?;
                handled = tick;
            } else if let Some(id) =
                fire_one(broker, config, &compiled, &s.name, tick, now_ms).await?
            {
                broker
                    .schedule_ran(&s.name, tick, Some((now_ms, id)))
                    .await?;
                handled = tick;
            }
        }
        if let Some(n) = compiled.next_after(handled) {
            next = Some(next.map_or(n, |m| m.min(n)));
        }
    }
    Ok(next)
}

/// Enqueues the tick's task. `None` when the template no longer makes a valid
/// task (a limit lowered since): logged, and the tick is not recorded, so it is
/// retried until it is missed.
async fn fire_one(
    broker: &dyn Broker,
    config: &ServeConfig,
    compiled: &Compiled,
    name: &str,
    tick_ms: u64,
    now_ms: u64,
) -> Result<Option<TaskId>, StoreError> {
    let task = match compiled.task(config, name, tick_ms, now_ms) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(schedule = %name, error = %e, "a schedule's task is not valid");
            return Ok(None);
        }
    };
    let out = broker.enqueue(&compiled.spec.queue, vec![task]).await?;
    let id = out.first().map(|e| e.id);
    if out.first().is_some_and(|e| e.created) {
        tracing::debug!(schedule = %name, tick_ms, "fired");
    }
    Ok(id)
}

/// The loop every server runs: fire what is due, sleep until the next tick (at
/// most `SCHEDULER_SLEEP_MS_MAX`, or until `changed`), until `stop`.
pub async fn run(
    broker: Arc<dyn Broker>,
    config: Arc<ServeConfig>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let notified = changed.notified();
        let now = now_ms();
        let next = match fire_due(&*broker, &config, now).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e.chain(), "firing schedules failed; retrying");
                None
            }
        };
        let cap = now + SCHEDULER_SLEEP_MS_MAX;
        let until = next.map_or(cap, |n| n.min(cap));
        let sleep = Duration::from_millis(until.saturating_sub(now_ms()));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = notified => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(cron: &str, tz: &str, missed: Missed) -> Compiled {
        let body = format!(
            r#"{{"cron": {cron:?}, "tz": {tz:?}, "queue": "q", "task": {{"payload": 1}}, "missed": {}}}"#,
            serde_json::to_string(&missed).unwrap()
        );
        let b: ScheduleBody = serde_json::from_str(&body).unwrap();
        Compiled::from_body(b, &ServeConfig::default(), 0)
            .unwrap()
            .0
    }

    fn ms(rfc: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn five_and_six_field_expressions_in_a_zone() {
        let c = compiled("*/5 * * * *", "UTC", Missed::Skip);
        assert_eq!(
            c.next_after(ms("2026-12-01T10:03:00Z")),
            Some(ms("2026-12-01T10:05:00Z"))
        );
        assert_eq!(
            c.next_after(ms("2026-12-01T10:05:00Z")),
            Some(ms("2026-12-01T10:10:00Z")),
            "strictly after"
        );
        let s = compiled("*/10 * * * * *", "UTC", Missed::Skip);
        assert_eq!(
            s.next_after(ms("2026-12-01T10:00:01Z")),
            Some(ms("2026-12-01T10:00:10Z"))
        );
        // 09:00 in Paris is 08:00 UTC in winter.
        let p = compiled("0 9 * * *", "Europe/Paris", Missed::Skip);
        assert_eq!(
            p.next_after(ms("2026-12-01T00:00:00Z")),
            Some(ms("2026-12-01T08:00:00Z"))
        );
    }

    #[test]
    fn a_fresh_tick_fires_and_a_missed_one_follows_the_policy() {
        let skip = compiled("*/5 * * * *", "UTC", Missed::Skip);
        let once = compiled("*/5 * * * *", "UTC", Missed::RunOnce);
        let last = ms("2026-12-01T10:00:00Z");
        assert_eq!(skip.due(last, ms("2026-12-01T10:04:59Z")), None);
        let on_time = ms("2026-12-01T10:05:00.200Z");
        assert_eq!(
            skip.due(last, on_time),
            Some((ms("2026-12-01T10:05:00Z"), true))
        );
        // Down for an hour: twelve ticks missed, handled as one.
        let later = ms("2026-12-01T11:02:00Z");
        assert_eq!(
            skip.due(last, later),
            Some((ms("2026-12-01T11:00:00Z"), false))
        );
        assert_eq!(
            once.due(last, later),
            Some((ms("2026-12-01T11:00:00Z"), true))
        );
        // A fresh tick after missed ones fires under either policy.
        let fresh = ms("2026-12-01T11:00:03Z");
        assert_eq!(
            skip.due(last, fresh),
            Some((ms("2026-12-01T11:00:00Z"), true))
        );
    }

    #[test]
    fn bad_definitions_are_refused_with_their_field() {
        let config = ServeConfig::default();
        for (body, field) in [
            (
                r#"{"cron": "* * *", "queue": "q", "task": {"payload": 1}}"#,
                "cron",
            ),
            (
                r#"{"cron": "61 * * * *", "queue": "q", "task": {"payload": 1}}"#,
                "cron",
            ),
            (
                r#"{"cron": "* * * * *", "tz": "Mars/Base", "queue": "q", "task": {"payload": 1}}"#,
                "tz",
            ),
            (
                r#"{"cron": "* * * * *", "queue": "bad name", "task": {"payload": 1}}"#,
                "queue",
            ),
            (
                r#"{"cron": "* * * * *", "queue": "q", "task": {"payload": 1, "idempotency_key": "k"}}"#,
                "task.idempotency_key",
            ),
            (
                r#"{"cron": "* * * * *", "queue": "q", "task": {"payload": 1, "run_at": "2030-01-01T00:00:00Z"}}"#,
                "task.run_at",
            ),
            (
                r#"{"cron": "* * * * *", "queue": "q", "task": {"payload": 1, "max_attempts": 0}}"#,
                "max_attempts",
            ),
            (
                r#"{"cron": "* * * * *", "queue": "q", "task": {"nope": 1}}"#,
                "task",
            ),
        ] {
            let b: ScheduleBody = serde_json::from_str(body).unwrap();
            match Compiled::from_body(b, &config, 0) {
                Err(InvalidInput::Invalid { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {:?}", other.err()),
            }
        }
    }
}
