//! Videos on edges: a `Video` record of frames and a frame rate, and checked access to video
//! latents.
//!
//! A [`PortType::Video`](crate::PortType::Video) value is a [`Record`] of kind `Video` with two
//! fields: `frames`, an `F×H×W×3` f32 image batch in `[0, 1]`, and `fps`, a positive float.
//! [`Video`] reads and writes that record so that every plugin checks it the same way.

use crate::error::NodeError;
use crate::tensor::Tensor;
use crate::value::{Record, Value};
use crate::DType;

/// The record kind of a video.
pub const VIDEO_RECORD: &str = "Video";

/// The most frames per second a video may claim.
pub const MAX_FPS: f64 = 1000.0;

/// A video: its frames and their rate.
#[derive(Clone, Debug)]
pub struct Video {
    /// `F×H×W×3` f32 frames in `[0, 1]`.
    pub frames: Tensor,
    /// Frames per second.
    pub fps: f64,
}

impl Video {
    /// A video of `frames` (`F×H×W×3`, f32) at `fps`; refuses other shapes and rates.
    pub fn new(frames: Tensor, fps: f64) -> Result<Self, NodeError> {
        let s = frames.shape();
        if s.len() != 4 || s[3] != 3 || s[0] == 0 {
            return Err(NodeError::invalid(format!(
                "video frames must be an F×H×W×3 image batch with at least one frame, got shape {s:?}"
            )));
        }
        if frames.dtype() != Some(DType::F32) {
            return Err(NodeError::invalid("video frames must be f32"));
        }
        check_fps(fps)?;
        Ok(Video { frames, fps })
    }

    /// The number of frames.
    pub fn len(&self) -> usize {
        self.frames.shape()[0]
    }

    /// Whether there are no frames (never true for a checked video).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(height, width)` of the frames.
    pub fn size(&self) -> (usize, usize) {
        let s = self.frames.shape();
        (s[1], s[2])
    }

    /// The video read from a value on a `Video` edge.
    pub fn from_value(v: &Value) -> Result<Self, NodeError> {
        let Value::Record(r) = v else {
            return Err(NodeError::invalid(format!(
                "expected a Video record, got {}",
                v.kind_name()
            )));
        };
        r.expect_kind(VIDEO_RECORD)?;
        let fps = r
            .get("fps")
            .and_then(Value::as_float)
            .ok_or_else(|| NodeError::invalid("Video: field `fps` must be a number"))?;
        Video::new(r.tensor("frames")?.clone(), fps)
    }

    /// The value to put on a `Video` edge.
    pub fn into_value(self) -> Value {
        Value::Record(
            Record::new(VIDEO_RECORD)
                .with("frames", self.frames)
                .with("fps", self.fps),
        )
    }
}

/// Refuses a frame rate that is not a finite number in (0, [`MAX_FPS`]].
pub fn check_fps(fps: f64) -> Result<(), NodeError> {
    if fps.is_finite() && fps > 0.0 && fps <= MAX_FPS {
        Ok(())
    } else {
        Err(NodeError::invalid(format!(
            "the frame rate must be in (0, {MAX_FPS}] frames per second, got {fps}"
        )))
    }
}

/// The shape `[N, C, F, H, W]` of a video latent, or an error naming `name`.
pub fn video_latent_shape(name: &str, t: &Tensor) -> Result<[usize; 5], NodeError> {
    match t.shape()[..] {
        [n, c, f, h, w] => Ok([n, c, f, h, w]),
        ref s => Err(NodeError::invalid(format!(
            "`{name}` must be a video latent N×C×F×H×W, got shape {s:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(vec![0.5f32; n], shape).unwrap()
    }

    #[test]
    fn a_video_round_trips_through_its_record() {
        let v = Video::new(frames(&[3, 4, 5, 3]), 8.0).unwrap();
        let back = Video::from_value(&v.into_value()).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back.size(), (4, 5));
        assert_eq!(back.fps, 8.0);
    }

    #[test]
    fn bad_frames_and_rates_are_refused() {
        assert!(Video::new(frames(&[3, 4, 5, 4]), 8.0).is_err());
        assert!(Video::new(frames(&[0, 4, 5, 3]), 8.0).is_err());
        assert!(Video::new(frames(&[4, 5, 3]), 8.0).is_err());
        for fps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e6] {
            assert!(Video::new(frames(&[1, 4, 5, 3]), fps).is_err(), "{fps}");
        }
        let other = Value::Record(Record::new("DenoiseRequest"));
        assert!(Video::from_value(&other).is_err());
    }
}
