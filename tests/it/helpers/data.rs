//! Test data: a reproducible random generator and readings as JSON.

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A reading as JSON, with an RFC 3339 timestamp.
pub fn reading_json(sensor: &str, value: f64, ts: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        r#"{{"sensor":"{sensor}","value":{value},"timestamp":"{}"}}"#,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}
