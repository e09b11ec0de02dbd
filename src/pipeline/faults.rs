//! Fault injection for the tests of supervision: makes a stage panic when it sees a reading of a
//! given sensor. It exists only in builds with the `fault-injection` feature, which the tests
//! enable; in every other build [`Faults`] is empty and its check compiles to nothing.

#[cfg(not(feature = "fault-injection"))]
use crate::domain::Reading;

#[cfg(feature = "fault-injection")]
pub use armed::Faults;

/// Without the `fault-injection` feature: nothing to arm, nothing to check.
#[cfg(not(feature = "fault-injection"))]
#[derive(Default)]
pub struct Faults;

#[cfg(not(feature = "fault-injection"))]
impl Faults {
    #[inline(always)]
    pub fn check<'a>(&self, _stage: &str, _readings: impl Iterator<Item = &'a Reading>) {}
}

#[cfg(feature = "fault-injection")]
mod armed {
    use crate::domain::Reading;
    use std::sync::{Arc, Mutex};

    /// A switch that makes a stage panic when it sees a reading of a given sensor, a given number
    /// of times.
    #[derive(Default)]
    pub struct Faults {
        armed: Mutex<Option<Armed>>,
    }

    struct Armed {
        stage: String,
        sensor: String,
        times: u32,
    }

    impl Faults {
        /// Arms the switch: `stage` panics on the next `times` batches holding a reading of
        /// `sensor`.
        pub fn panic_in(stage: &str, sensor: &str, times: u32) -> Arc<Self> {
            Arc::new(Self {
                armed: Mutex::new(Some(Armed {
                    stage: stage.to_owned(),
                    sensor: sensor.to_owned(),
                    times,
                })),
            })
        }

        pub fn check<'a>(&self, stage: &str, mut readings: impl Iterator<Item = &'a Reading>) {
            let fire = {
                let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
                match armed.as_mut() {
                    Some(armed)
                        if armed.stage == stage
                            && armed.times > 0
                            && readings.any(|r| *r.sensor_id == *armed.sensor) =>
                    {
                        armed.times -= 1;
                        true
                    }
                    _ => false,
                }
            };
            if fire {
                panic!("fault injected in stage {stage}");
            }
        }
    }
}
