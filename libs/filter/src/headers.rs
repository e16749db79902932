//! How evaluation reads a message's headers: the [`HeaderLookup`] trait and its ready-made
//! implementations for pairs and maps of strings.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

/// A message's headers, as a filter reads them.
///
/// Implement it on a newtype over your header type (e.g. async-nats's `HeaderMap`) to evaluate
/// filters without copying headers. Ready-made implementations cover slices, arrays and vectors
/// of `(name, value)` pairs (a name may repeat: a multi-valued header), string maps, and
/// [`NoHeaders`].
pub trait HeaderLookup {
    /// Every value of the header called `name`, comparing names ignoring ASCII case (`name` is
    /// always lowercase ASCII). No values: the header is absent.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a;
}

/// A message without headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoHeaders;

impl HeaderLookup for NoHeaders {
    fn values<'a>(&'a self, _name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        std::iter::empty()
    }
}

impl<T: HeaderLookup + ?Sized> HeaderLookup for &T {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        (**self).values(name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for [(K, V)] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        pairs(self.iter(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> HeaderLookup for [(K, V); N] {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        pairs(self.iter(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for Vec<(K, V)> {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        pairs(self.iter(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for BTreeMap<K, V> {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        pairs(self.iter(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, S: BuildHasher> HeaderLookup for HashMap<K, V, S> {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        pairs(self.iter(), name)
    }
}

/// The values of the pairs whose name equals `name` ignoring ASCII case.
fn pairs<'a, K, V, P>(
    pairs: impl Iterator<Item = P> + 'a,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a
where
    K: AsRef<str> + 'a,
    V: AsRef<str> + 'a,
    P: PairRef<'a, K, V>,
{
    pairs.filter_map(move |pair| {
        let (k, v) = pair.split();
        k.as_ref().eq_ignore_ascii_case(name).then(|| v.as_ref())
    })
}

/// A borrowed `(name, value)` pair, from a slice (`&(K, V)`) or a map (`(&K, &V)`).
trait PairRef<'a, K: 'a, V: 'a> {
    fn split(self) -> (&'a K, &'a V);
}

impl<'a, K, V> PairRef<'a, K, V> for &'a (K, V) {
    fn split(self) -> (&'a K, &'a V) {
        (&self.0, &self.1)
    }
}

impl<'a, K, V> PairRef<'a, K, V> for (&'a K, &'a V) {
    fn split(self) -> (&'a K, &'a V) {
        self
    }
}
