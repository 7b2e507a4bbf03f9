//! Task groups in the embedded store: bookkeeping of members' outcomes, the
//! fail-fast / cancel cascade, and the group record on disk. Runs inside writer
//! rounds (under the state lock); the rules themselves are `weir_core::group`.

use weir_core::machine;
use weir_core::{GroupState, GroupTally, TaskRecord, TaskState};

use super::disk::GroupRecord;
use super::state::{GroupMem, State};
use super::writer::{finish, After, Batch};
use super::{group_in, record_in, Disk};

/// A group member reached a terminal state in this round.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupEvent {
    pub group: u128,
    pub member: u128,
    pub state: TaskState,
}

/// Whether the task's group has failed or been canceled, so that the task must not
/// (re)start: it is canceled instead. Catches members that were changing state in
/// the round that cascaded.
pub(crate) fn closed(st: &State, rec: &TaskRecord) -> bool {
    rec.group
        .and_then(|g| st.groups.get(&g.0))
        .is_some_and(|g| g.tally.state().is_terminal())
}

/// After a transition that leaves `rec` queued again (a retry, a release, an
/// expired lease): if its group has failed or was canceled meanwhile, cancel it
/// instead. Returns the task's state either way.
pub(crate) fn cancel_if_closed(
    st: &State,
    rec: &mut TaskRecord,
    next: TaskState,
    now: u64,
) -> Result<TaskState, machine::TransitionError> {
    if next.is_terminal() || !closed(st, rec) {
        return Ok(next);
    }
    machine::cancel(rec, now)?;
    Ok(rec.state)
}

/// A new group's in-memory state.
pub(crate) fn open(record: GroupRecord, done: Vec<bool>, tally: GroupTally) -> GroupMem {
    GroupMem {
        cascaded: false,
        notified: tally.state().is_terminal(),
        record,
        done,
        tally,
    }
}

/// Applies member events (and any cancel they cascade into), then rewrites each
/// changed group's record. `changed` names groups changed by the caller directly.
pub(crate) fn process(
    disk: &Disk,
    st: &mut State,
    batch: &mut Batch,
    after: &mut After,
    mut changed: Vec<u128>,
    now: u64,
) {
    let mut work: Vec<GroupEvent> = std::mem::take(&mut after.group_events);
    let mut cascade_now: Vec<u128> = changed.clone();
    loop {
        for gid in cascade_now.drain(..) {
            cascade(disk, st, batch, after, gid, &mut work, now);
        }
        let Some(ev) = work.pop() else { break };
        let Some(g) = st.groups.get_mut(&ev.group) else {
            continue;
        };
        let Some(i) = g.record.members.iter().position(|m| *m == ev.member) else {
            continue;
        };
        if g.done[i] {
            continue;
        }
        g.done[i] = true;
        match ev.state {
            TaskState::Completed => g.tally.completed += 1,
            TaskState::Dead => g.tally.dead += 1,
            TaskState::Canceled => g.tally.canceled += 1,
            s => debug_assert!(false, "member event for non-terminal state {s:?}"),
        }
        changed.push(ev.group);
        if g.tally.cancels_others() && !g.cascaded {
            cascade_now.push(ev.group);
        }
    }
    changed.sort_unstable();
    changed.dedup();
    for gid in changed {
        write_group(st, batch, after, gid, now);
    }
}

/// Cancels every open member of a failed or canceled group: queued ones at once,
/// active ones through `cancel_requested` (their worker learns it on heartbeat).
fn cascade(
    disk: &Disk,
    st: &mut State,
    batch: &mut Batch,
    after: &mut After,
    gid: u128,
    work: &mut Vec<GroupEvent>,
    now: u64,
) {
    let Some(g) = st.groups.get_mut(&gid) else {
        return;
    };
    g.cascaded = true;
    let open: Vec<u128> = g
        .record
        .members
        .iter()
        .zip(&g.done)
        .filter(|(_, done)| !**done)
        .map(|(m, _)| *m)
        .collect();
    for m in open {
        if let Some(lease) = st.leases.get_mut(&m) {
            lease.cancel_requested = true;
            if let Some(r) = &mut lease.record {
                r.cancel_requested = true;
            }
            // Durable, so that a restart ends the task canceled: the record on
            // disk (its attempt not counted) with the request.
            match record_in(disk, st, m) {
                Ok(Some(mut on_disk)) if !on_disk.state.is_terminal() => {
                    on_disk.cancel_requested = true;
                    batch.update(&on_disk);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a group member to cancel; it is canceled when it would next start")
                }
            }
            // A worker watching this lease learns of the cancel at once.
            after.fire.push(m);
            continue;
        }
        // Not leased: queued (cancel now), or changing state in this very round
        // (then `closed` cancels it when it would next start).
        let Ok(Some(mut rec)) = record_in(disk, st, m) else {
            continue;
        };
        if rec.state.is_terminal() {
            continue;
        }
        let q = st.intern(&rec.queue);
        if !st.remove_queued(q, m, rec.priority, rec.run_at_ms) {
            continue;
        }
        if machine::cancel(&mut rec, now).is_ok() {
            finish(batch, after, q, &rec);
            work.append(&mut after.group_events);
        }
    }
}

fn write_group(st: &mut State, batch: &mut Batch, after: &mut After, gid: u128, now: u64) {
    let Some(g) = st.groups.get_mut(&gid) else {
        return;
    };
    let state = g.tally.state();
    g.record.state = state.index();
    g.record.canceled_by_request = g.tally.canceled_by_request;
    let finished = g.tally.open() == 0;
    if finished {
        g.record.finished_ms = Some(now);
        after
            .group_expiry
            .push((now.saturating_add(g.record.retention_ms), gid));
    }
    batch.group(gid, &g.record);
    if state.is_terminal() && !g.notified {
        g.notified = true;
        after.fire.push(gid);
    }
    if finished {
        st.groups.remove(&gid);
    }
}

/// Marks a running group canceled by request and cascades. `Err` names the state of
/// a group that is not running (or `None` if the group is not open in memory).
pub(crate) fn cancel(
    disk: &Disk,
    st: &mut State,
    batch: &mut Batch,
    after: &mut After,
    gid: u128,
    now: u64,
) -> Result<(), Option<GroupState>> {
    let Some(g) = st.groups.get_mut(&gid) else {
        return Err(None);
    };
    let state = g.tally.state();
    if state.is_terminal() {
        return Err(Some(state));
    }
    g.tally.canceled_by_request = true;
    process(disk, st, batch, after, vec![gid], now);
    Ok(())
}

/// Rebuilds open groups at startup from their records and their members' records.
/// Returns groups whose members all ended but whose record was not yet final.
pub(crate) fn recover(disk: &Disk, st: &mut State) -> Result<Vec<u128>, crate::StoreError> {
    let mut finished = Vec::new();
    let ids: Vec<u128> = st.group_locs.keys().copied().collect();
    for gid in ids {
        let Some(record) = group_in(disk, st, gid)? else {
            continue;
        };
        if record.finished_ms.is_some() {
            continue;
        }
        let mut tally = GroupTally {
            total: record.members.len() as u32,
            fail_fast: record.fail_fast,
            canceled_by_request: record.canceled_by_request,
            ..GroupTally::default()
        };
        let mut done = Vec::with_capacity(record.members.len());
        for &m in &record.members {
            let state = record_in(disk, st, m)?.map(|r| r.state);
            match state {
                Some(TaskState::Completed) => tally.completed += 1,
                Some(TaskState::Dead) => tally.dead += 1,
                // A member removed by retention ended canceled or completed; either
                // way it is not open.
                Some(TaskState::Canceled) | None => tally.canceled += 1,
                Some(_) => {}
            }
            done.push(state.is_none_or(|s| s.is_terminal()));
        }
        let mut g = open(record, done, tally);
        // A group that had cascaded before the restart has its open members canceled
        // when they would next start (`closed`).
        g.cascaded = tally.cancels_others();
        if tally.open() == 0 {
            finished.push(gid);
        }
        st.groups.insert(gid, g);
    }
    Ok(finished)
}

/// Writes the final record of groups found finished at startup.
pub(crate) fn finish_recovered(st: &mut State, batch: &mut Batch, gids: Vec<u128>, now: u64) {
    let mut after = After::default();
    for gid in gids {
        write_group(st, batch, &mut after, gid, now);
    }
    for (at, gid) in after.group_expiry {
        st.group_expiry.insert((at, gid));
    }
}
