//! Faults switched on at run time, each either until cleared or for the next N requests it
//! applies to. Shared by the Modbus and instrument models; what a fault *does* is theirs.

/// A list of armed faults of type `F`.
#[derive(Debug, Clone)]
pub(crate) struct Armed<F> {
    faults: Vec<(F, Option<u32>)>,
}

impl<F> Default for Armed<F> {
    fn default() -> Self {
        Self { faults: Vec::new() }
    }
}

impl<F: Clone> Armed<F> {
    /// Arms `fault` for `times` requests (`None`: until cleared), replacing an armed fault that
    /// `same` says occupies the same slot, so setting a new delay replaces the old one.
    pub(crate) fn arm(&mut self, fault: F, times: Option<u32>, same: impl Fn(&F, &F) -> bool) {
        self.faults.retain(|(armed, _)| !same(armed, &fault));
        if times != Some(0) {
            self.faults.push((fault, times));
        }
    }

    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }

    /// Returns the faults that `applies` to this request, counting it against each of them and
    /// disarming those used up.
    pub(crate) fn fire(&mut self, mut applies: impl FnMut(&F) -> bool) -> Vec<F> {
        let mut fired = Vec::new();
        self.faults.retain_mut(|(fault, remaining)| {
            if !applies(fault) {
                return true;
            }
            fired.push(fault.clone());
            match remaining {
                None => true,
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n > 0
                }
            }
        });
        fired
    }

    pub(crate) fn any(&self, mut pred: impl FnMut(&F) -> bool) -> bool {
        self.faults.iter().any(|(fault, _)| pred(fault))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_armed_for_n_times_fires_n_times_then_disarms() {
        let mut armed = Armed::default();
        armed.arm('x', Some(2), |a, b| a == b);
        assert_eq!(armed.fire(|_| true), vec!['x']);
        assert_eq!(armed.fire(|_| false), Vec::<char>::new());
        assert_eq!(armed.fire(|_| true), vec!['x']);
        assert_eq!(armed.fire(|_| true), Vec::<char>::new());
    }

    #[test]
    fn arming_the_same_slot_replaces_and_zero_times_disarms() {
        let mut armed = Armed::default();
        armed.arm(1, None, |_, _| true);
        armed.arm(2, None, |_, _| true);
        assert_eq!(armed.fire(|_| true), vec![2]);
        armed.arm(3, Some(0), |_, _| true);
        assert!(!armed.any(|_| true));
    }
}
