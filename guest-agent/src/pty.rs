//! Pseudo-terminals for interactive shells (`ExecSpec.pty`): open a master,
//! hand the slave to the child as its controlling terminal, resize.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use agent_proto::msg::WinSize;

/// A fresh pty pair: (master, slave), both close-on-exec.
pub fn open(size: WinSize) -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt takes no pointers.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: m is a fresh descriptor we now own.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: grantpt/unlockpt on our master; no pointers.
    if unsafe { libc::grantpt(m) } < 0 || unsafe { libc::unlockpt(m) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: name is a writable buffer of name.len() bytes.
    let rc = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path into name.
    let s = unsafe { libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: s is a fresh descriptor we now own.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    resize(master.as_raw_fd(), size)?;
    Ok((master, slave))
}

/// Sets the terminal size (the kernel sends SIGWINCH to the foreground job).
pub fn resize(master: RawFd, size: WinSize) -> io::Result<()> {
    let ws = libc::winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The terminal's foreground process group (where Ctrl-C would go).
pub fn foreground_group(master: RawFd) -> Option<i32> {
    // SAFETY: tcgetpgrp takes no pointers.
    let g = unsafe { libc::tcgetpgrp(master) };
    (g > 0).then_some(g)
}

/// Makes `cmd` run on `slave`: stdio on it, a new session, and the slave as
/// its controlling terminal.
pub fn attach_child(cmd: &mut Command, slave: &OwnedFd) -> io::Result<()> {
    cmd.stdin(Stdio::from(slave.try_clone()?));
    cmd.stdout(Stdio::from(slave.try_clone()?));
    cmd.stderr(Stdio::from(slave.try_clone()?));
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (setsid, ioctl) on fd 0, which std
    // has already made the slave.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
