//! The broker's Lua scripts, kept as `.lua` files beside this one (`lua/`) and compiled in. Each
//! script is its file prefixed with the helpers it uses (`now.lua`: Redis's clock;
//! `read_latest.lua`: reading latest values), so each helper is written once. `bench/lib.sh`
//! loads the same files.

use redis::Script;

/// The scripts, each with its SHA computed once.
#[derive(Debug)]
pub(super) struct Scripts {
    /// Publishes one message (`publish.lua`).
    pub(super) publish: Script,
    /// A subscriber's view of a site (`snapshot.lua`).
    pub(super) snapshot: Script,
    /// A reader's view of a site's latest values (`latest.lua`).
    pub(super) latest: Script,
    /// The node's read of a site's stream (`history.lua`).
    pub(super) history: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            publish: Script::new(concat!(include_str!("lua/now.lua"), include_str!("lua/publish.lua"))),
            snapshot: Script::new(concat!(
                include_str!("lua/now.lua"),
                include_str!("lua/read_latest.lua"),
                include_str!("lua/snapshot.lua")
            )),
            latest: Script::new(concat!(
                include_str!("lua/now.lua"),
                include_str!("lua/read_latest.lua"),
                include_str!("lua/latest.lua")
            )),
            history: Script::new(concat!(include_str!("lua/now.lua"), include_str!("lua/history.lua"))),
        }
    }
}
