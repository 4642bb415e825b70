//! One connection to the other process: length-prefixed frames over a Unix stream socket, with
//! the file descriptors of a frame (tensor memory) attached to its header by `SCM_RIGHTS`.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// The largest frame either side accepts (the other process may be hostile or broken).
pub const MAX_FRAME: usize = 256 << 20;
/// The most descriptors one frame carries (the kernel's limit is 253).
pub const MAX_FDS: usize = 250;

const HEADER: usize = 8;

/// A connected stream socket. Each connection carries one conversation at a time.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
}

impl Conn {
    /// Wraps a connected socket.
    pub fn new(stream: UnixStream) -> Self {
        Conn { stream }
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(Conn, UnixStream)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Conn::new(a), b))
    }

    /// Sends one frame.
    pub fn send(&self, payload: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        send_frame(&self.stream, payload, fds)
    }

    /// Receives one frame.
    pub fn recv(&self) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        recv_frame(&self.stream)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Sends `payload` with `fds` attached to its header.
pub fn send_frame(stream: &UnixStream, payload: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(invalid(format!(
            "{} tensors in one message; isolated plugins take at most {MAX_FDS}",
            fds.len()
        )));
    }
    if payload.len() > MAX_FRAME {
        return Err(invalid(format!(
            "a message of {} bytes; the limit is {MAX_FRAME}",
            payload.len()
        )));
    }
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(invalid("too many descriptors for one message".into()));
    }
    let sent = loop {
        match sendmsg(
            stream,
            &[IoSlice::new(&header)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut w = stream;
    w.write_all(&header[sent..])?;
    w.write_all(payload)
}

/// Receives one frame and its descriptors.
pub fn recv_frame(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut header = [0u8; HEADER];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut header)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if got.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other side closed the connection",
        ));
    }
    let truncated = got.flags.contains(ReturnFlags::CTRUNC);
    let mut fds = Vec::new();
    for m in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if truncated {
        return Err(invalid("a message carried too many descriptors".into()));
    }
    let mut r = stream;
    r.read_exact(&mut header[got.bytes..])?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let nfds = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME {
        return Err(invalid(format!(
            "a message of {len} bytes; the limit is {MAX_FRAME}"
        )));
    }
    if nfds != fds.len() {
        return Err(invalid(format!(
            "a message announced {nfds} descriptors and carried {}",
            fds.len()
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok((payload, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    #[test]
    fn frames_carry_bytes_and_descriptors() {
        let (a, b) = Conn::pair().expect("pair");
        let b = Conn::new(b);
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(b"shared").expect("write");
        let fd: OwnedFd = file.into();
        let big = vec![7u8; 1 << 20];
        let sender = std::thread::spawn(move || {
            a.send(b"first", &[fd]).expect("send");
            a.send(&big, &[]).expect("send big");
            a
        });
        let (p, fds) = b.recv().expect("recv");
        assert_eq!(p, b"first");
        assert_eq!(fds.len(), 1);
        let mut f = std::fs::File::from(fds.into_iter().next().expect("fd"));
        f.rewind().expect("rewind");
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read");
        assert_eq!(text, "shared");
        let (p, fds) = b.recv().expect("recv big");
        assert_eq!(p.len(), 1 << 20);
        assert!(fds.is_empty());
        drop(sender.join().expect("sender"));
        assert_eq!(
            b.recv().expect_err("closed").kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn oversized_frames_are_refused() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        (&a).write_all(&header).expect("write");
        let err = recv_frame(&b).expect_err("too large");
        assert!(err.to_string().contains("limit"), "{err}");
    }
}
