//! A helper process: the benchmark re-executed with a role as its first argument.

use super::*;

/// A helper in its own process that says `ready`, waits for [`Helper::go`],
/// works, and says `done CPU_SECONDS`.
pub struct Helper {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl Helper {
    /// Starts this program with `args` (the role first); returns once it is ready.
    pub fn start(args: &[String]) -> Result<Helper> {
        let role = args.first().map_or("helper", String::as_str);
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {role}"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        ensure!(line.trim() == "ready", "{role} said {line:?}");
        Ok(Helper {
            child,
            stdin,
            stdout,
        })
    }

    /// Lets it work; returns when.
    pub fn go(&mut self) -> Result<Instant> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        let now = Instant::now();
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(now)
    }

    /// Waits for the end; returns the CPU seconds it used.
    pub fn finish(&mut self) -> Result<Option<f64>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        drop(self.stdin.take());
        let status = self.child.wait()?;
        ensure!(status.success(), "helper failed: {status}");
        Ok(line
            .trim()
            .strip_prefix("done ")
            .and_then(|cpu| cpu.parse().ok()))
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
