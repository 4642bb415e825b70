//! A decoded clip: equal-sized RGB frames and how long each is shown.

use crate::MediaError;

/// Frames of one size, 8-bit RGB, each shown for its delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width×height×3` bytes per frame, row-major.
    pub frames: Vec<Vec<u8>>,
    /// How long each frame is shown, in milliseconds.
    pub delays_ms: Vec<u32>,
}

impl Clip {
    /// A clip of `frames` at `fps` frames per second.
    pub fn at_fps(width: u32, height: u32, frames: Vec<Vec<u8>>, fps: f64) -> Self {
        let delays_ms = delays(frames.len(), fps, 1000.0);
        let delays_ms = delays_ms.into_iter().map(|d| d as u32).collect();
        Clip {
            width,
            height,
            frames,
            delays_ms,
        }
    }

    /// The mean frame rate (frames over the total duration); `fallback` when the file gave no
    /// durations.
    pub fn fps(&self, fallback: f64) -> f64 {
        let total: u64 = self.delays_ms.iter().map(|&d| d as u64).sum();
        if total == 0 || self.frames.is_empty() {
            fallback
        } else {
            self.frames.len() as f64 * 1000.0 / total as f64
        }
    }

    /// Refuses clips that are empty or whose frames and delays disagree with the size.
    pub fn check(&self) -> Result<(), MediaError> {
        if self.frames.is_empty() || self.width == 0 || self.height == 0 {
            return Err(MediaError::Invalid(
                "a clip needs at least one frame of at least 1×1 pixels".into(),
            ));
        }
        let per = self.width as usize * self.height as usize * 3;
        if let Some(i) = self.frames.iter().position(|f| f.len() != per) {
            return Err(MediaError::Invalid(format!(
                "frame {i} has {} bytes, a {}×{} RGB frame has {per}",
                self.frames[i].len(),
                self.width,
                self.height
            )));
        }
        if self.delays_ms.len() != self.frames.len() {
            return Err(MediaError::Invalid(format!(
                "{} frames but {} delays",
                self.frames.len(),
                self.delays_ms.len()
            )));
        }
        Ok(())
    }
}

/// Per-frame delays of `n` frames at `fps`, in units of `1/ticks_per_second` s, rounded
/// cumulatively (frame i ends at round((i+1)·ticks/fps)) so the total stays exact; each at least 1.
pub fn delays(n: usize, fps: f64, ticks_per_second: f64) -> Vec<u64> {
    let tick = ticks_per_second / fps;
    let end = |i: usize| (i as f64 * tick).round() as u64;
    (0..n).map(|i| (end(i + 1) - end(i)).max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_rounding_keeps_the_total() {
        // 8 fps in centiseconds: 12.5 each, alternating 13 and 12.
        let d = delays(8, 8.0, 100.0);
        assert_eq!(d.iter().sum::<u64>(), 100);
        assert!(d.iter().all(|&x| x == 12 || x == 13), "{d:?}");
        assert_eq!(delays(3, 1000.0, 100.0), vec![1, 1, 1]);
    }

    #[test]
    fn fps_is_frames_over_duration() {
        let c = Clip::at_fps(1, 1, vec![vec![0; 3]; 6], 12.0);
        assert!((c.fps(1.0) - 12.0).abs() < 0.05, "{}", c.fps(1.0));
        assert!(c.check().is_ok());
    }
}
