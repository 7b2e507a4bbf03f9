//! Task groups (errgroup semantics): N tasks that succeed together. The rules that
//! decide a group's state from its members' outcomes live here, pure and tested.

/// A group's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// Some member is not terminal, and nothing has failed the group yet.
    Running,
    /// Every member completed.
    Completed,
    /// A member ended dead (with `fail_fast`, at once; otherwise once all ended).
    Failed,
    /// The group was canceled, or (without a dead member) some member was.
    Canceled,
}

impl GroupState {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Running => "running",
            GroupState::Completed => "completed",
            GroupState::Failed => "failed",
            GroupState::Canceled => "canceled",
        }
    }

    pub fn index(self) -> u8 {
        self as u8
    }

    pub fn from_index(i: u8) -> Option<GroupState> {
        [
            GroupState::Running,
            GroupState::Completed,
            GroupState::Failed,
            GroupState::Canceled,
        ]
        .get(i as usize)
        .copied()
    }

    pub fn is_terminal(self) -> bool {
        self != GroupState::Running
    }
}

/// How many members ended how, and what the group was told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupTally {
    pub total: u32,
    pub completed: u32,
    pub dead: u32,
    pub canceled: u32,
    pub fail_fast: bool,
    /// The group itself was canceled by a producer or operator.
    pub canceled_by_request: bool,
}

impl GroupTally {
    /// Members not yet terminal.
    pub fn open(&self) -> u32 {
        self.total - self.completed - self.dead - self.canceled
    }

    /// The group's state. Once terminal it never changes back: `Failed` and
    /// `Canceled` are decided by the first event that causes them.
    pub fn state(&self) -> GroupState {
        debug_assert!(self.completed + self.dead + self.canceled <= self.total);
        if self.canceled_by_request {
            return GroupState::Canceled;
        }
        if self.dead > 0 && (self.fail_fast || self.open() == 0) {
            return GroupState::Failed;
        }
        if self.open() > 0 {
            return GroupState::Running;
        }
        if self.canceled > 0 {
            GroupState::Canceled
        } else {
            GroupState::Completed
        }
    }

    /// Whether the group's other open members must now be canceled.
    pub fn cancels_others(&self) -> bool {
        self.open() > 0 && matches!(self.state(), GroupState::Failed | GroupState::Canceled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(total: u32, completed: u32, dead: u32, canceled: u32, fail_fast: bool) -> GroupTally {
        GroupTally {
            total,
            completed,
            dead,
            canceled,
            fail_fast,
            canceled_by_request: false,
        }
    }

    #[test]
    fn table() {
        assert_eq!(t(3, 0, 0, 0, true).state(), GroupState::Running);
        assert_eq!(t(3, 3, 0, 0, true).state(), GroupState::Completed);
        assert_eq!(t(3, 1, 1, 0, true).state(), GroupState::Failed);
        assert!(t(3, 1, 1, 0, true).cancels_others());
        assert_eq!(t(3, 1, 1, 0, false).state(), GroupState::Running);
        assert!(!t(3, 1, 1, 0, false).cancels_others());
        assert_eq!(t(3, 2, 1, 0, false).state(), GroupState::Failed);
        assert_eq!(t(3, 2, 0, 1, false).state(), GroupState::Canceled);
        let mut c = t(3, 1, 0, 0, false);
        c.canceled_by_request = true;
        assert_eq!(c.state(), GroupState::Canceled);
        assert!(c.cancels_others());
        for i in 0..4 {
            assert_eq!(GroupState::from_index(i).unwrap().index(), i);
        }
    }
}
