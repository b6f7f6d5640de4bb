//! Small files written so that a crash leaves the old version or the new
//! one, never a torn mix: the plugin registry's pointers, the pipeline's
//! revisions and live pointer, processors' deactivations.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path`: a temporary file beside it, fsync, rename over
/// `path`, fsync of the directory (so the rename itself is durable).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
