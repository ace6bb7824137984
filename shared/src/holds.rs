//! Values kept by name while anyone holds them: a [`Hold`] guard per holder, and the value
//! gone when the last guard drops. The submitter keeps each unit's offered source this way
//! until every unit with that text has ended, and a worker a source it asked for ahead until
//! every attempt naming it has ended; two holders of one name share one value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The values held, by name, each with how many guards hold it.
#[derive(Debug)]
pub struct Holds<V>(Arc<Mutex<HashMap<String, (V, usize)>>>);

impl<V> Default for Holds<V> {
    fn default() -> Self {
        Holds(Arc::default())
    }
}

impl<V> Clone for Holds<V> {
    fn clone(&self) -> Self {
        Holds(self.0.clone())
    }
}

/// One holder's hold on the value under its name.
#[derive(Debug)]
pub struct Hold<V> {
    holds: Holds<V>,
    name: String,
}

impl<V> Drop for Hold<V> {
    fn drop(&mut self) {
        let mut held = self.holds.lock();
        if let Some((_, holders)) = held.get_mut(&self.name) {
            *holders -= 1;
            if *holders == 0 {
                held.remove(&self.name);
            }
        }
    }
}

impl<V> Holds<V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (V, usize)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<V: Clone> Holds<V> {
    /// Holds the value under `name`, made by `make` when nobody holds one yet: the value
    /// held, whether this is its first holder, and the guard.
    pub fn hold(&self, name: &str, make: impl FnOnce() -> V) -> (V, bool, Hold<V>) {
        let mut held = self.lock();
        let entry = held.entry(name.to_owned()).or_insert_with(|| (make(), 0));
        entry.1 += 1;
        let (value, first) = (entry.0.clone(), entry.1 == 1);
        drop(held);
        let guard = Hold {
            holds: self.clone(),
            name: name.to_owned(),
        };
        (value, first, guard)
    }

    /// The value held under `name`, if anyone holds one.
    pub fn get(&self, name: &str) -> Option<V> {
        self.lock().get(name).map(|(v, _)| v.clone())
    }

    /// How many names are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_stays_while_any_holder_holds_it_and_is_shared() {
        let holds = Holds::<&str>::default();
        let (a, first, one) = holds.hold("x", || "made");
        assert_eq!((a, first), ("made", true));
        let (b, first, two) = holds.hold("x", || "not made");
        assert_eq!(
            (b, first),
            ("made", false),
            "the second holder shares the value"
        );
        let (_, _, other) = holds.hold("y", || "y");
        assert_eq!(holds.len(), 2);
        drop(one);
        assert_eq!(
            holds.get("x"),
            Some("made"),
            "the second holder still holds it"
        );
        drop(two);
        assert_eq!(holds.get("x"), None);
        drop(other);
        assert!(holds.is_empty());
    }
}
