//! FreeNoise's context windows: the motion modules' attention run over overlapping windows of
//! frames and the results blended frame by frame with per-window weights, so a video may be
//! longer than the modules' position table (diffusers' `FreeNoiseTransformerBlock`).

use std::fmt;
use std::str::FromStr;

/// How the frames of one window are weighted when windows overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weighting {
    /// Every frame 1.
    Flat,
    /// Rising to the middle and falling again: `1 2 3 2 1` (FreeNoise's eq. 9, the default).
    Pyramid,
    /// Almost nothing for the first half, then falling: `0.01 0.01 3 2 1`.
    DelayedReverseSawtooth,
}

impl Weighting {
    /// The names [`FromStr`] takes.
    pub const NAMES: [&'static str; 3] = ["flat", "pyramid", "delayed_reverse_sawtooth"];

    /// The weights of a window of `len` frames.
    ///
    /// For an odd `len` the sawtooth has `(len - 1) / 2` small weights before its peak (the
    /// pattern diffusers documents; its code makes one too many and fails for odd lengths).
    pub fn weights(self, len: usize) -> Vec<f32> {
        match self {
            Weighting::Flat => vec![1.0; len],
            Weighting::Pyramid => {
                let half = len / 2;
                let rise = (1..=half).map(|k| k as f32);
                if len.is_multiple_of(2) {
                    rise.clone().chain(rise.rev()).collect()
                } else {
                    let peak = (half + 1) as f32;
                    rise.clone()
                        .chain(std::iter::once(peak))
                        .chain(rise.rev())
                        .collect()
                }
            }
            Weighting::DelayedReverseSawtooth => {
                let mid = len.div_ceil(2);
                let peak = if len.is_multiple_of(2) {
                    vec![mid as f32]
                } else {
                    Vec::new()
                };
                std::iter::repeat_n(0.01, mid.saturating_sub(1))
                    .chain(peak)
                    .chain((1..=mid).rev().map(|k| k as f32))
                    .collect()
            }
        }
    }
}

impl FromStr for Weighting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flat" => Ok(Weighting::Flat),
            "pyramid" => Ok(Weighting::Pyramid),
            "delayed_reverse_sawtooth" => Ok(Weighting::DelayedReverseSawtooth),
            other => Err(format!(
                "unknown window weighting `{other}`; expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for Weighting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Weighting::Flat => "flat",
            Weighting::Pyramid => "pyramid",
            Weighting::DelayedReverseSawtooth => "delayed_reverse_sawtooth",
        })
    }
}

/// One window: frames `start..start + len`, of which those from `start + keep` on are blended
/// into the output (all of them but in the closing window that was moved back to fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The first frame.
    pub start: usize,
    /// The first frame, counted within the window, whose result is kept.
    pub keep: usize,
}

/// FreeNoise's sliding windows over the frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContextWindows {
    /// Frames per window (at most the motion modules' `motion_max_seq_length`).
    pub length: usize,
    /// Frames between the starts of consecutive windows.
    pub stride: usize,
    /// How overlapping results are blended.
    pub weighting: Weighting,
}

impl ContextWindows {
    /// Checked windows: `length` and `stride` at least 1, the stride at most the length (else
    /// frames would be skipped).
    pub fn new(length: usize, stride: usize, weighting: Weighting) -> Result<Self, String> {
        if length == 0 || stride == 0 {
            return Err(format!(
                "context windows need a length and a stride of at least 1 (got {length} and {stride})"
            ));
        }
        if stride > length {
            return Err(format!(
                "a context stride of {stride} skips frames between windows of {length}; use a stride of at most the length"
            ));
        }
        Ok(Self {
            length,
            stride,
            weighting,
        })
    }

    /// The windows over `frames` frames (more than `length`): starts `0, stride, …` while a
    /// whole window fits, then, when that leaves frames uncovered, one window ending at the
    /// last frame that contributes only the frames no window had.
    pub fn spans(&self, frames: usize) -> Vec<Span> {
        let l = self.length;
        if frames <= l {
            return vec![Span { start: 0, keep: 0 }];
        }
        let mut spans: Vec<Span> = (0..=frames - l)
            .step_by(self.stride)
            .map(|start| Span { start, keep: 0 })
            .collect();
        let covered = spans.last().map_or(0, |s| s.start + l);
        if covered < frames {
            let start = frames - l;
            spans.push(Span {
                start,
                keep: covered - start,
            });
        }
        spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(frames: usize, length: usize, stride: usize) -> Vec<(usize, usize)> {
        ContextWindows::new(length, stride, Weighting::Flat)
            .map(|w| w.spans(frames))
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.start, s.keep))
            .collect()
    }

    #[test]
    fn windows_cover_every_frame_once_a_closing_window_fits() {
        // diffusers' docstring: 16 every 4 over 24 frames → 0-15, 4-19, 8-23.
        assert_eq!(spans(24, 16, 4), [(0, 0), (4, 0), (8, 0)]);
        // 25 frames: a closing window 9-24 keeps only frame 24.
        assert_eq!(spans(25, 16, 4), [(0, 0), (4, 0), (8, 0), (9, 15)]);
        assert_eq!(spans(13, 6, 4), [(0, 0), (4, 0), (7, 3)]);
        assert_eq!(spans(5, 8, 4), [(0, 0)]);
        assert_eq!(spans(12, 4, 4), [(0, 0), (4, 0), (8, 0)]);
        for frames in 1..40 {
            for (length, stride) in [(16, 4), (6, 4), (5, 3), (4, 4), (7, 1)] {
                let mut seen = vec![0; frames];
                let w = ContextWindows::new(length, stride, Weighting::Flat).unwrap();
                for s in w.spans(frames) {
                    let end = (s.start + length).min(frames);
                    seen[s.start + s.keep..end].iter_mut().for_each(|n| *n += 1);
                }
                assert!(
                    seen.iter().all(|&n| n > 0),
                    "{frames} frames, {length}/{stride}"
                );
            }
        }
    }

    #[test]
    fn weights_follow_diffusers_patterns() {
        assert_eq!(Weighting::Pyramid.weights(4), [1.0, 2.0, 2.0, 1.0]);
        assert_eq!(Weighting::Pyramid.weights(5), [1.0, 2.0, 3.0, 2.0, 1.0]);
        assert_eq!(Weighting::Flat.weights(3), [1.0; 3]);
        assert_eq!(
            Weighting::DelayedReverseSawtooth.weights(4),
            [0.01, 2.0, 2.0, 1.0]
        );
        assert_eq!(
            Weighting::DelayedReverseSawtooth.weights(5),
            [0.01, 0.01, 3.0, 2.0, 1.0]
        );
        for len in 1..20 {
            for w in [
                Weighting::Flat,
                Weighting::Pyramid,
                Weighting::DelayedReverseSawtooth,
            ] {
                assert_eq!(w.weights(len).len(), len, "{w} {len}");
                assert!(w.weights(len).iter().all(|&x| x > 0.0));
            }
        }
        for name in Weighting::NAMES {
            assert_eq!(
                name.parse::<Weighting>().map(|w| w.to_string()),
                Ok(name.into())
            );
        }
        assert!("triangle".parse::<Weighting>().is_err());
    }
}
