//! The soak's bookkeeping: how each check fared, so one run reports every broken behaviour at
//! once instead of stopping at the first.

use std::{collections::BTreeMap, sync::Mutex};

/// Failure details kept per check (the count covers all of them).
const DETAILS_KEPT: usize = 3;

/// One check's outcomes.
#[derive(Debug, Default)]
struct Outcomes {
    passed: u64,
    failed: u64,
    /// The first few failures, enough to tell what went wrong.
    details: Vec<String>,
}

/// Outcomes by check name.
#[derive(Debug, Default)]
pub struct Tally(Mutex<BTreeMap<&'static str, Outcomes>>);

impl Tally {
    pub fn pass(&self, check: &'static str) {
        self.0.lock().expect("tally").entry(check).or_default().passed += 1;
    }

    pub fn fail(&self, check: &'static str, detail: impl Into<String>) {
        let mut all = self.0.lock().expect("tally");
        let outcomes = all.entry(check).or_default();
        outcomes.failed += 1;
        if outcomes.details.len() < DETAILS_KEPT {
            outcomes.details.push(detail.into());
        }
    }

    /// Records `result` as a pass or a failure of `check`.
    pub fn record(&self, check: &'static str, result: Result<(), String>) {
        match result {
            Ok(()) => self.pass(check),
            Err(detail) => self.fail(check, detail),
        }
    }

    /// How many times `check` passed.
    pub fn count(&self, check: &'static str) -> u64 {
        self.0.lock().expect("tally").get(check).map_or(0, |o| o.passed)
    }

    /// One line per check: `check: passed/total`.
    pub fn summary(&self) -> Vec<String> {
        let all = self.0.lock().expect("tally");
        all.iter().map(|(check, o)| format!("{check}: {}/{}", o.passed, o.passed + o.failed)).collect()
    }

    /// One line per failed check, with its first failures.
    pub fn failures(&self) -> Vec<String> {
        let all = self.0.lock().expect("tally");
        all.iter()
            .filter(|(_, o)| o.failed > 0)
            .map(|(check, o)| {
                format!("{check}: {} of {} failed, e.g. {}", o.failed, o.passed + o.failed, o.details.join(" | "))
            })
            .collect()
    }

    /// Whether `check` ran at least once (a hostile client that never got going tests nothing).
    pub fn ran(&self, check: &'static str) -> bool {
        self.0.lock().expect("tally").get(check).is_some_and(|o| o.passed + o.failed > 0)
    }
}
