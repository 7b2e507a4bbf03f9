//! The Lua scripts, one per transition. Each is `scripts/common.lua` (helpers:
//! key names, counts, finishing a task, group bookkeeping, wake-ups) followed by
//! its own body; `redis::Script` runs it by EVALSHA and loads it on NOSCRIPT.

use redis::Script;

const COMMON: &str = include_str!("scripts/common.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

pub struct Scripts {
    pub enqueue: Script,
    pub lease: Script,
    pub settle: Script,
    pub release: Script,
    pub heartbeat: Script,
    pub cancel: Script,
    pub view: Script,
    pub group_view: Script,
    pub group_cancel: Script,
    pub sweep: Script,
    pub delete_queue: Script,
    pub configure: Script,
    pub schedule: Script,
    pub api_keys: Script,
    pub mark_registered: Script,
    pub audit: Script,
    pub browse: Script,
    pub admin: Script,
    pub queue_head: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            enqueue: script(include_str!("scripts/enqueue.lua")),
            lease: script(include_str!("scripts/lease.lua")),
            settle: script(include_str!("scripts/settle.lua")),
            release: script(include_str!("scripts/release.lua")),
            heartbeat: script(include_str!("scripts/heartbeat.lua")),
            cancel: script(include_str!("scripts/cancel.lua")),
            view: script(include_str!("scripts/view.lua")),
            group_view: script(include_str!("scripts/group_view.lua")),
            group_cancel: script(include_str!("scripts/group_cancel.lua")),
            sweep: script(include_str!("scripts/sweep.lua")),
            delete_queue: script(include_str!("scripts/delete_queue.lua")),
            configure: script(include_str!("scripts/configure.lua")),
            schedule: script(include_str!("scripts/schedule.lua")),
            api_keys: script(include_str!("scripts/api_keys.lua")),
            mark_registered: script(include_str!("scripts/mark_registered.lua")),
            audit: script(include_str!("scripts/audit.lua")),
            browse: script(include_str!("scripts/browse.lua")),
            admin: script(include_str!("scripts/admin.lua")),
            queue_head: script(include_str!("scripts/queue_head.lua")),
        }
    }
}
