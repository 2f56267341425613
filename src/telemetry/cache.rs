//! A small cache with TTL, an LRU bound and tags, for QuickBooks lookups (items by name
//! and by id). Time is passed in (milliseconds), so tests need no clock.
//!
//! Invalidation by key, by pattern (`item:*`, `*` anywhere; a plain string is a prefix)
//! and by tag; every count (hits, misses, evictions, expirations, invalidations) is kept.

pub use crate::protocol::CacheStats;
use std::collections::BTreeMap;

// Keys are hashed several times a lookup (entries, tags, use order, keys seen): foldhash
// (seeded per process) instead of SipHash, which was a fifth of the cache's time.
use foldhash::{HashMap, HashSet};

struct Entry<V> {
    value: V,
    expires_ms: i64,
    tags: Vec<String>,
    /// Last use, for the LRU order.
    tick: u64,
}

pub struct Cache<V> {
    entries: HashMap<String, Entry<V>>,
    /// Use order: tick → key (the smallest tick is the least recently used).
    order: BTreeMap<u64, String>,
    tags: HashMap<String, HashSet<String>>,
    /// Keys ever cached (bounded: forgotten past 4× the capacity), to tell cold misses.
    seen: HashSet<String>,
    tick: u64,
    ttl_ms: i64,
    stats: CacheStats,
}

impl<V: Clone> Cache<V> {
    pub fn new(capacity: usize, ttl_ms: i64) -> Self {
        Self {
            entries: HashMap::default(),
            order: BTreeMap::new(),
            tags: HashMap::default(),
            seen: HashSet::default(),
            tick: 0,
            ttl_ms,
            stats: CacheStats {
                capacity: capacity.max(1),
                ..Default::default()
            },
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len(),
            ..self.stats
        }
    }

    pub fn get(&mut self, key: &str, now_ms: i64) -> Option<V> {
        let expired = match self.entries.get(key) {
            None => {
                self.stats.misses += 1;
                if !self.seen.contains(key) {
                    self.stats.cold_misses += 1;
                }
                return None;
            }
            Some(e) => e.expires_ms <= now_ms,
        };
        if expired {
            self.remove(key);
            self.stats.expirations += 1;
            self.stats.misses += 1;
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let e = self.entries.get_mut(key).expect("present");
        self.order.remove(&e.tick);
        e.tick = tick;
        self.order.insert(tick, key.to_owned());
        self.stats.hits += 1;
        Some(e.value.clone())
    }

    pub fn put(&mut self, key: &str, value: V, tags: &[&str], now_ms: i64) {
        self.remove(key);
        while self.entries.len() >= self.stats.capacity {
            let Some((_, lru)) = self.order.pop_first() else {
                break;
            };
            self.remove(&lru);
            self.stats.evictions += 1;
        }
        self.tick += 1;
        if self.seen.len() >= self.stats.capacity * 4 {
            self.seen.clear();
        }
        self.seen.insert(key.to_owned());
        for t in tags {
            self.tags
                .entry((*t).to_owned())
                .or_default()
                .insert(key.to_owned());
        }
        self.order.insert(self.tick, key.to_owned());
        self.entries.insert(
            key.to_owned(),
            Entry {
                value,
                expires_ms: now_ms + self.ttl_ms,
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
                tick: self.tick,
            },
        );
    }

    fn remove(&mut self, key: &str) -> bool {
        let Some(e) = self.entries.remove(key) else {
            return false;
        };
        self.order.remove(&e.tick);
        for t in &e.tags {
            if let Some(keys) = self.tags.get_mut(t) {
                keys.remove(key);
                if keys.is_empty() {
                    self.tags.remove(t);
                }
            }
        }
        true
    }

    /// The keys [`Self::invalidate_pattern`] would drop (nothing changes).
    pub fn pattern_keys(&self, pattern: &str) -> Vec<String> {
        self.entries
            .keys()
            .filter(|k| matches(pattern, k))
            .cloned()
            .collect()
    }

    /// The keys [`Self::invalidate_tag`] would drop (nothing changes).
    pub fn tag_keys(&self, tag: &str) -> Vec<String> {
        self.tags
            .get(tag)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every key held (what [`Self::clear`] would drop).
    pub fn keys(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Drops one key; how many entries went (0 or 1).
    pub fn invalidate_key(&mut self, key: &str) -> usize {
        let n = usize::from(self.remove(key));
        self.count_invalidated(n)
    }

    /// Drops every key matching `pattern` (`*` matches any run of characters; without a
    /// `*`, the pattern is a prefix). `*` alone drops everything.
    pub fn invalidate_pattern(&mut self, pattern: &str) -> usize {
        let keys = self.pattern_keys(pattern);
        let n = keys.iter().filter(|k| self.remove(k)).count();
        self.count_invalidated(n)
    }

    pub fn invalidate_tag(&mut self, tag: &str) -> usize {
        let keys = self.tag_keys(tag);
        let n = keys.iter().filter(|k| self.remove(k)).count();
        self.count_invalidated(n)
    }

    pub fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        self.order.clear();
        self.tags.clear();
        self.count_invalidated(n)
    }

    fn count_invalidated(&mut self, n: usize) -> usize {
        self.stats.invalidations += n as u64;
        n
    }
}

/// Glob with `*` only; without `*` a prefix match.
pub fn matches(pattern: &str, key: &str) -> bool {
    if !pattern.contains('*') {
        return key.starts_with(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !key.starts_with(first) || key.len() < first.len() + last.len() || !key.ends_with(last) {
        return false;
    }
    let mut rest = &key[first.len()..key.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_ttl() {
        let mut c = Cache::new(10, 1000);
        c.put("item:name:Mug", 1, &[], 0);
        assert_eq!(c.get("item:name:Mug", 999), Some(1));
        assert_eq!(c.get("item:name:Mug", 1000), None);
        assert_eq!(c.get("item:name:Cap", 1000), None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.expirations, s.entries), (1, 2, 1, 0));
        assert_eq!(
            s.cold_misses, 1,
            "Cap was never cached: nothing could have hit"
        );
        assert_eq!(
            s.warm_misses(),
            1,
            "Mug expired: a longer TTL would have hit"
        );
        assert!((s.hit_rate().unwrap() - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_least_recently_used_goes_first() {
        let mut c = Cache::new(2, 60_000);
        c.put("a", 1, &[], 0);
        c.put("b", 2, &[], 0);
        assert_eq!(c.get("a", 1), Some(1)); // b is now the LRU
        c.put("c", 3, &[], 2);
        assert_eq!(c.get("b", 3), None);
        assert_eq!(c.get("a", 3), Some(1));
        assert_eq!(c.get("c", 3), Some(3));
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn invalidation_by_key_pattern_and_tag() {
        let mut c = Cache::new(100, 60_000);
        c.put("item:name:Mug", 1, &["item", "product:prod_1"], 0);
        c.put("item:id:17", 1, &["item", "product:prod_1"], 0);
        c.put("item:name:Cap", 2, &["item", "product:prod_2"], 0);
        c.put("account:Sales", 9, &["account"], 0);
        assert_eq!(c.invalidate_key("item:id:17"), 1);
        assert_eq!(c.invalidate_key("item:id:17"), 0);
        assert_eq!(c.invalidate_tag("product:prod_1"), 1, "item:name:Mug");
        assert_eq!(c.invalidate_pattern("item:*"), 1, "item:name:Cap");
        assert_eq!(c.get("account:Sales", 1), Some(9));
        assert_eq!(c.invalidate_pattern("acc"), 1, "a prefix");
        assert_eq!(c.stats().invalidations, 4);
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn glob_patterns() {
        assert!(matches("item:*", "item:name:Mug"));
        assert!(matches("*:Mug", "item:name:Mug"));
        assert!(matches("item:*:Mug", "item:name:Mug"));
        assert!(!matches("item:*:Cap", "item:name:Mug"));
        assert!(matches("*", "anything"));
        assert!(matches("item", "item:id:1"));
        assert!(!matches("a*a", "a"));
    }
}
