//! A real host: Debian's stock arm64 Linux kernel booted deprivileged at EL1
//! on isola (docs/linux-host.md).
//!
//! The pipeline, each step cached under `target/linux/`:
//! 1. fetch `linux-image-<ver>-arm64` and `busybox-static` for arm64 from
//!    Debian's archive with apt (adding the arm64 architecture to dpkg if it
//!    is missing), and unpack them with `dpkg-deb -x`;
//! 2. turn the package's `vmlinuz` into a raw arm64 `Image` (it is raw on
//!    bookworm; gzip and EFI zboot are unpacked too) and check its header;
//! 3. write an initramfs (cpio "newc", written here) holding busybox, a
//!    `/dev/console` node, the virtio-pci and virtio-blk modules from the
//!    same kernel package, and `linux/init`; and a small labelled disk;
//! 4. boot QEMU virt with the engine as `-kernel`, the `Image` at the
//!    engine's host entry and the initramfs after it (QEMU's generic
//!    loader), the disk on virtio-blk-pci behind the engine's SMMU and QEMU's
//!    `edu` DMA device on the PCIe bus, the initramfs location and the probe
//!    addresses on the kernel command line, and judge the console.
//!
//! Invariants:
//! - The addresses below are the engine's own (`isola_layout`): it owns
//!   `[ENGINE_BASE, ENGINE_END)` and enters the host at [`HOST_ENTRY`] with
//!   `x0` = its edited device tree; everything else of the 2 GiB is host RAM.
//! - A run passes only on the console lines of [`story`] (in that order), none
//!   of [`FORBIDDEN`], the engine's `exit status: ok` and QEMU's own exit 0
//!   before the deadline. If the kernel or busybox cannot be fetched the test
//!   reports itself skipped (see [`crate::cmd::SKIPPED`]), never passed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cmd::{is_root, root};
use crate::watch::{Run, watch};

/// First byte of the engine's carve-out.
const ENGINE_BASE: u64 = isola_layout::CARVEOUT_BASE;
/// End of the engine's carve-out: the host's RAM starts here in the device
/// tree the engine passes on.
const ENGINE_END: u64 = isola_layout::CARVEOUT_END;
/// Where the engine enters the host: the `Image` is loaded here, which is
/// 2 MiB aligned, so `text_offset` must be 0.
const HOST_ENTRY: u64 = isola_layout::HOST_ENTRY;
/// Where the initramfs is loaded (if the kernel's `image_size` leaves room).
const INITRD_BASE: u64 = 0x5000_0000;
/// RAM given to QEMU (`-m`); it ends at `RAM_END`.
const RAM_MIB: u64 = 2048;
const RAM_END: u64 = ENGINE_BASE + (RAM_MIB << 20);
/// Linux is told (`mem=`) to use this much of the host RAM it is shown, so
/// the top [`HOST_RAM_PROBE_MARGIN`] is host RAM that Linux does not manage:
/// `/dev/mem` (with Debian's `CONFIG_STRICT_DEVMEM`) refuses RAM the kernel
/// manages, but allows RAM outside it, which is exactly the path the engine
/// probe takes.
const HOST_RAM_PROBE_MARGIN: u64 = 64 << 20;
/// The page of host RAM the init script writes and reads through /dev/mem.
const HOST_PROBE: u64 = RAM_END - 0x1000;
/// The page of engine memory it tries to read and write: the start of the
/// carve-out, where QEMU's device tree lies (a leak would read its magic).
const ENGINE_PROBE: u64 = ENGINE_BASE;

/// Deadline of one booted Linux scenario: a passing run with 8 CPUs took 8
/// to 22 s of wall time on this 2-core machine (TCG), depending on load.
const TEST_DEADLINE: Duration = Duration::from_secs(180);
/// Deadline of `cargo xtask linux`.
const RUN_DEADLINE: Duration = Duration::from_secs(1800);

/// Why the assets are not there.
pub(crate) enum FetchError {
    /// Debian's archive (or apt itself) is not reachable from here: the test
    /// is skipped, and says why.
    Unavailable(String),
    /// The packages came, but something in them or in our handling is wrong.
    Broken(String),
}

impl From<String> for FetchError {
    fn from(s: String) -> Self {
        Self::Broken(s)
    }
}

/// What a boot needs, ready on disk.
pub(crate) struct Assets {
    /// The raw arm64 `Image`.
    pub(crate) image: PathBuf,
    /// Bytes the kernel occupies from its load address (header `image_size`).
    image_size: u64,
    /// The initramfs (uncompressed cpio newc).
    initramfs: PathBuf,
    /// The virtio-blk-pci disk's contents (see [`write_disk`]).
    disk: PathBuf,
    /// Kernel package name, for the report.
    pub(crate) kernel_package: String,
}

pub(crate) fn cache_dir() -> PathBuf {
    root().join("target").join("linux")
}

/// How the init script ends the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// `poweroff -f`: PSCI `SYSTEM_OFF` through the relay.
    PowerOff,
    /// `reboot -f`: PSCI `SYSTEM_RESET` through the relay (QEMU runs with
    /// `-no-reboot`, so the reset ends it).
    Reset,
}

/// One booted Linux scenario of the test command.
struct Scenario {
    name: &'static str,
    smp: u32,
    end: End,
}

/// The test command's Linux scenarios: the full story on 8 CPUs ending in
/// a power-off, and on 2 CPUs ending in a reset.
const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "linux-host-smp8",
        smp: 8,
        end: End::PowerOff,
    },
    Scenario {
        name: "linux-host-reset-smp2",
        smp: 2,
        end: End::Reset,
    },
];

/// `cargo xtask linux [--smp N] [--reboot] [--bare]`: boots Debian's kernel
/// on isola (or, with `--bare`, directly on QEMU at EL1 without the engine,
/// for comparison) and streams the console; fails unless the run passes the
/// same judgement as the test.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut smp = 8_u32;
    let mut bare = false;
    let mut end = End::PowerOff;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--bare" => bare = true,
            "--reboot" => end = End::Reset,
            "--smp" => {
                smp = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=123).contains(n))
                    .ok_or("--smp takes a CPU count from 1 to 123 (QEMU virt's GICv3 limit with highmem=off)")?;
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let assets = fetch().map_err(|e| match e {
        FetchError::Unavailable(why) => format!("cannot fetch Debian's kernel and busybox: {why}"),
        FetchError::Broken(why) => why,
    })?;
    println!("kernel: {}", assets.kernel_package);
    let cmd = if bare {
        bare_command(&assets, smp)
    } else {
        let images = crate::build::build_images()?;
        isola_command(&images.engine, &assets, smp, end)?
    };
    let run = watch(cmd, RUN_DEADLINE, true)?;
    println!("linux run took {:.1} s", run.elapsed.as_secs_f64());
    if bare {
        return match run.code {
            Some(0) => Ok(()),
            _ => Err(format!("bare Linux run ended badly\n{}", run.log())),
        };
    }
    judge(&run, smp, end).map_err(|e| format!("{e}\n(see the console above)"))
}

/// The booted test: every [`SCENARIOS`] entry, each reported by name as
/// PASS or FAIL (with its captured console), or all SKIPPED by name when
/// the kernel cannot be fetched here.
pub fn booted_test() -> Result<(), String> {
    let assets = match fetch() {
        Ok(a) => a,
        Err(FetchError::Unavailable(why)) => {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            return Err(format!(
                "{}{}: Debian's kernel and busybox could not be fetched: {why}",
                crate::cmd::SKIPPED,
                names.join(", ")
            ));
        }
        Err(FetchError::Broken(why)) => return Err(why),
    };
    let images = crate::build::build_images()?;
    let mut failures = Vec::new();
    for s in &SCENARIOS {
        // Guarded: a run that needs any QEMU data file fails here.
        let run = watch(
            crate::machine::without_data_files(&isola_command(
                &images.engine,
                &assets,
                s.smp,
                s.end,
            )?),
            TEST_DEADLINE,
            false,
        )?;
        match judge(&run, s.smp, s.end) {
            Ok(()) => println!(
                "{} ({}): PASS ({:.1} s)",
                s.name,
                assets.kernel_package,
                run.elapsed.as_secs_f64()
            ),
            Err(e) => {
                println!("{}: FAIL: {e}", s.name);
                failures.push(format!("{}: {e}\n{}", s.name, run.log()));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n\n"))
    }
}

// ---------------------------------------------------------------------------
// Fetching and unpacking

/// Makes sure `target/linux/` holds the `Image` and the initramfs.
pub(crate) fn fetch() -> Result<Assets, FetchError> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let image = dir.join("Image");
    let busybox = dir.join("busybox");
    let package_file = dir.join("kernel-package");
    let modules = dir.join("modules");
    let cached = image.is_file()
        && busybox.is_file()
        && package_file.is_file()
        && MODULES.iter().all(|(name, _)| modules.join(name).is_file());
    if !cached {
        download_and_unpack(&dir)?;
    }
    let kernel_package = std::fs::read_to_string(&package_file)
        .map_err(|e| format!("reading {}: {e}", package_file.display()))?
        .trim()
        .to_string();
    let header = std::fs::read(&image).map_err(|e| format!("reading {}: {e}", image.display()))?;
    let image_size = image_header(&header)?;
    let initramfs = dir.join("initramfs.cpio");
    write_initramfs(
        &busybox,
        &modules,
        &root().join("linux").join("init"),
        &initramfs,
    )?;
    let disk = dir.join("disk.img");
    write_disk(&disk)?;
    Ok(Assets {
        image,
        image_size,
        initramfs,
        disk,
        kernel_package,
    })
}

/// Output of a command that must succeed; a failure to start it means the
/// tool is not here (`Unavailable`), a failed run is reported with `on_fail`.
fn output(mut c: Command, on_fail: fn(String) -> FetchError) -> Result<String, FetchError> {
    let shown = format!("{c:?}");
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| FetchError::Unavailable(format!("cannot run {shown}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(on_fail(format!(
            "{shown} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The versioned kernel package Debian's `linux-image-arm64` depends on.
fn kernel_package() -> Result<String, FetchError> {
    let mut c = Command::new("apt-cache");
    c.args(["depends", "linux-image-arm64:arm64"]);
    let text = output(c, FetchError::Unavailable)?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|p| p.trim_start_matches('<').trim_end_matches('>'))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-arm64:arm64"))
        .map(str::to_string)
        .ok_or_else(|| {
            FetchError::Unavailable(format!(
                "linux-image-arm64:arm64 names no versioned kernel package:\n{text}"
            ))
        })
}

fn download_and_unpack(dir: &Path) -> Result<(), FetchError> {
    let unavailable = FetchError::Unavailable;
    let archs = output(
        {
            let mut c = Command::new("dpkg");
            c.arg("--print-foreign-architectures");
            c
        },
        unavailable,
    )?;
    let mut updated = false;
    if !archs.lines().any(|a| a.trim() == "arm64") {
        if !is_root() {
            return Err(unavailable(
                "dpkg has no arm64 architecture and we are not root to add it \
                 (run `sudo dpkg --add-architecture arm64 && sudo apt-get update`)"
                    .to_string(),
            ));
        }
        println!("adding the arm64 architecture to dpkg and updating apt's lists");
        let mut c = Command::new("dpkg");
        c.args(["--add-architecture", "arm64"]);
        output(c, unavailable)?;
        apt_update()?;
        updated = true;
    }
    let package = match kernel_package() {
        Ok(p) => p,
        Err(_) if !updated && is_root() => {
            apt_update()?;
            kernel_package()?
        }
        Err(e) => return Err(e),
    };
    println!("fetching {package} and busybox-static:arm64 from Debian");
    let debs = dir.join("debs");
    // Start clean so exactly the two packages are there to unpack.
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs).map_err(|e| format!("creating {}: {e}", debs.display()))?;
    let mut c = Command::new("apt-get");
    c.current_dir(&debs)
        // Downloading into our own directory as root: apt's unprivileged
        // sandbox user could not write there.
        .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .args([package.as_str(), "busybox-static:arm64"]);
    output(c, unavailable)?;
    let find_deb = |prefix: &str| -> Result<PathBuf, FetchError> {
        std::fs::read_dir(&debs)
            .map_err(|e| format!("reading {}: {e}", debs.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
            })
            .ok_or_else(|| FetchError::Broken(format!("apt-get download left no {prefix}*.deb")))
    };
    let kernel_name = package.trim_end_matches(":arm64");
    let kernel_deb = find_deb(&format!("{kernel_name}_"))?;
    let busybox_deb = find_deb("busybox-static_")?;
    let tree = dir.join("unpacked");
    let _ = std::fs::remove_dir_all(&tree);
    for deb in [&kernel_deb, &busybox_deb] {
        let mut c = Command::new("dpkg-deb");
        c.arg("-x").arg(deb).arg(&tree);
        output(c, FetchError::Broken)?;
    }
    let vmlinuz = std::fs::read_dir(tree.join("boot"))
        .map_err(|e| format!("the kernel package has no /boot: {e}"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| "the kernel package has no /boot/vmlinuz-*".to_string())?;
    let packed =
        std::fs::read(&vmlinuz).map_err(|e| format!("reading {}: {e}", vmlinuz.display()))?;
    let raw = unpack_vmlinuz(&packed)?;
    image_header(&raw)?;
    std::fs::write(dir.join("Image"), &raw).map_err(|e| format!("writing Image: {e}"))?;
    std::fs::copy(tree.join("bin").join("busybox"), dir.join("busybox"))
        .map_err(|e| format!("busybox-static has no /bin/busybox: {e}"))?;
    let release = kernel_name.trim_start_matches("linux-image-");
    let modules = dir.join("modules");
    std::fs::create_dir_all(&modules).map_err(|e| format!("creating modules/: {e}"))?;
    for (name, from) in MODULES {
        let src = tree
            .join("lib/modules")
            .join(release)
            .join("kernel")
            .join(from)
            .join(name);
        std::fs::copy(&src, modules.join(name))
            .map_err(|e| format!("the kernel package has no {}: {e}", src.display()))?;
    }
    if let Some(config) = std::fs::read_dir(tree.join("boot"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("config-"))
        })
    {
        let _ = std::fs::copy(config, dir.join("config"));
    }
    // Written last: its presence marks a complete cache.
    std::fs::write(dir.join("kernel-package"), format!("{package}\n"))
        .map_err(|e| format!("writing kernel-package: {e}"))?;
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_dir_all(&debs);
    Ok(())
}

fn apt_update() -> Result<(), FetchError> {
    let mut c = Command::new("apt-get");
    c.args(["update", "-q"]);
    output(c, FetchError::Unavailable).map(|_| ())
}

/// The raw `Image` inside a Debian `vmlinuz`: raw already, gzip, or an EFI
/// zboot image (a PE stub whose header names the payload's offset, size and
/// compression; Linux's `drivers/firmware/efi/libstub/zboot-header.S`).
fn unpack_vmlinuz(packed: &[u8]) -> Result<Vec<u8>, String> {
    if packed.get(0x38..0x3c) == Some(b"ARM\x64") {
        return Ok(packed.to_vec());
    }
    if packed.starts_with(&[0x1f, 0x8b]) {
        return decompress("gzip", packed);
    }
    if packed.starts_with(b"MZ") && packed.get(4..8) == Some(b"zimg") {
        let word = |at: usize| -> Result<usize, String> {
            packed
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(|b| u32::from_le_bytes(b) as usize)
                .ok_or_else(|| "truncated EFI zboot header".to_string())
        };
        let (offset, size) = (word(8)?, word(12)?);
        let payload = packed
            .get(offset..offset.saturating_add(size))
            .ok_or("EFI zboot payload outside the file")?;
        let kind = packed
            .get(0x18..0x20)
            .map(|b| b.split(|&c| c == 0).next().unwrap_or_default())
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned();
        let tool = match kind.as_str() {
            "gzip" => "gzip",
            "zstd" | "zstd22" => "zstd",
            "xzkern" | "lzma" => "xz",
            other => {
                return Err(format!(
                    "EFI zboot with {other:?} compression is not supported"
                ));
            }
        };
        return decompress(tool, payload);
    }
    Err("vmlinuz is neither a raw arm64 Image, gzip, nor EFI zboot".to_string())
}

fn decompress(tool: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {tool} to unpack the kernel: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {tool}: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(format!("{tool} -d failed with {}", out.status));
    }
    Ok(out.stdout)
}

/// Checks an arm64 `Image` header (Documentation/arch/arm64/booting.rst)
/// and returns its `image_size`. The engine enters the host at a 2 MiB
/// aligned address, so the image must ask for `text_offset` 0 (every kernel
/// since v5.8 does), and must be little-endian with 4 KiB pages.
fn image_header(image: &[u8]) -> Result<u64, String> {
    let field = |at: usize| -> Option<u64> {
        image
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if image.get(0x38..0x3c) != Some(b"ARM\x64") {
        return Err("not an arm64 Image (no ARM\\x64 magic)".to_string());
    }
    let (text_offset, image_size, flags) = match (field(8), field(16), field(24)) {
        (Some(t), Some(s), Some(f)) => (t, s, f),
        _ => return Err("truncated arm64 Image header".to_string()),
    };
    if text_offset != 0 {
        return Err(format!(
            "the Image asks for text_offset {text_offset:#x}; the engine enters the host at a \
             2 MiB boundary, so only text_offset 0 (Linux >= 5.8) is supported"
        ));
    }
    if flags & 1 != 0 {
        return Err("the Image is big-endian".to_string());
    }
    if (flags >> 1) & 3 > 1 {
        return Err("the Image wants a page size other than 4 KiB".to_string());
    }
    if image_size == 0 || HOST_ENTRY + image_size > RAM_END - HOST_RAM_PROBE_MARGIN {
        return Err(format!(
            "the Image's image_size {image_size:#x} does not fit"
        ));
    }
    Ok(image_size)
}

// ---------------------------------------------------------------------------
// The initramfs

/// A directory of an initramfs.
pub(crate) fn directory(name: &str) -> Member<'_> {
    Member {
        name,
        mode: 0o040755,
        rdev: (0, 0),
        data: &[],
    }
}

/// The members every initramfs of the project starts with: the usual
/// directories, the console's device node, busybox and the init script.
pub(crate) fn busybox_members<'a>(busybox: &'a [u8], init: &'a [u8]) -> Vec<Member<'a>> {
    let mut members: Vec<Member<'a>> = ["bin", "dev", "proc", "sys", "tmp"].map(directory).into();
    members.extend([
        Member {
            name: "dev/console",
            mode: 0o020600,
            rdev: (5, 1),
            data: &[],
        },
        Member {
            name: "bin/busybox",
            mode: 0o100755,
            rdev: (0, 0),
            data: busybox,
        },
        Member {
            name: "init",
            mode: 0o100755,
            rdev: (0, 0),
            data: init,
        },
    ]);
    members
}

/// One member of a cpio archive.
pub(crate) struct Member<'a> {
    pub(crate) name: &'a str,
    pub(crate) mode: u32,
    /// (major, minor) of a device node.
    pub(crate) rdev: (u32, u32),
    pub(crate) data: &'a [u8],
}

/// Appends one cpio "newc" record: a 110-byte ASCII header, the name with
/// its NUL, padded to 4 bytes, then the data, padded to 4 bytes.
fn cpio_record(out: &mut Vec<u8>, ino: u32, m: &Member<'_>) -> Result<(), String> {
    let size = u32::try_from(m.data.len()).map_err(|_| format!("{} is over 4 GiB", m.name))?;
    let namesize = u32::try_from(m.name.len() + 1).map_err(|_| "name too long".to_string())?;
    let nlink = if m.mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino, m.mode, 0, 0, nlink, 0, size, 0, 0, m.rdev.0, m.rdev.1, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(m.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(m.data);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A cpio "newc" archive of `members`, with its trailer.
pub(crate) fn cpio(members: &[Member<'_>]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (ino, m) in (1_u32..).zip(members) {
        cpio_record(&mut out, ino, m)?;
    }
    cpio_record(
        &mut out,
        0,
        &Member {
            name: "TRAILER!!!",
            mode: 0,
            rdev: (0, 0),
            data: &[],
        },
    )?;
    Ok(out)
}

/// The kernel modules the init script loads, in this order, and where they
/// are under `lib/modules/<release>/kernel/`: Debian builds the virtio-pci
/// transport (with its two helper libraries, which it needs) and the virtio
/// block driver as modules; the virtio core is built in.
const MODULES: [(&str, &str); 4] = [
    ("virtio_pci_modern_dev.ko", "drivers/virtio"),
    ("virtio_pci_legacy_dev.ko", "drivers/virtio"),
    ("virtio_pci.ko", "drivers/virtio"),
    ("virtio_blk.ko", "drivers/block"),
];

/// Sectors of the virtio-blk-pci disk (1 MiB).
const DISK_SECTORS: usize = 2048;

/// The text at the start of disk sector `n`, which the init script reads
/// back through the virtio-blk-pci device.
fn disk_label(n: usize) -> String {
    format!("isola virtio-blk-pci disk sector {n}")
}

/// Writes the disk image: a label at the start of its first and last
/// sectors, zeros elsewhere.
fn write_disk(out: &Path) -> Result<(), String> {
    let mut disk = vec![0_u8; DISK_SECTORS * 512];
    for n in [0, DISK_SECTORS - 1] {
        let label = disk_label(n);
        disk[n * 512..n * 512 + label.len()].copy_from_slice(label.as_bytes());
    }
    std::fs::write(out, disk).map_err(|e| format!("writing {}: {e}", out.display()))
}

/// Writes the initramfs: the directories init needs, `/dev/console` (the
/// kernel opens it for init's stdio before anything is mounted), busybox,
/// the [`MODULES`] in `/lib/modules/` and the init script.
fn write_initramfs(busybox: &Path, modules: &Path, init: &Path, out: &Path) -> Result<(), String> {
    let busybox = std::fs::read(busybox).map_err(|e| format!("reading busybox: {e}"))?;
    let mut module_data = Vec::new();
    for (name, _) in MODULES {
        let path = modules.join(name);
        let data = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        module_data.push((format!("lib/modules/{name}"), data));
    }
    let init = std::fs::read(init).map_err(|e| format!("reading {}: {e}", init.display()))?;
    let mut members = busybox_members(&busybox, &init);
    members.extend(["lib", "lib/modules"].map(directory));
    members.extend(module_data.iter().map(|(name, data)| Member {
        name,
        mode: 0o100644,
        rdev: (0, 0),
        data,
    }));
    std::fs::write(out, cpio(&members)?).map_err(|e| format!("writing {}: {e}", out.display()))
}

// ---------------------------------------------------------------------------
// Booting

fn align_up_2m(x: u64) -> u64 {
    (x + 0x1f_ffff) & !0x1f_ffff
}

/// Kernel command line shared by both boots: the PL011 console (early too,
/// so a hang before the driver shows), the initramfs location (Linux's
/// `initrd=start,size`, since QEMU only writes `linux,initrd-*` into the
/// device tree for a Linux `-kernel`), `mem=` as explained at
/// [`HOST_RAM_PROBE_MARGIN`], and reboot on panic (with `-no-reboot`, a
/// panic ends the run at once instead of at the deadline).
fn cmdline(initrd_base: u64, initrd_size: u64, linux_ram: u64, probes: &str) -> String {
    format!(
        "console=ttyAMA0 earlycon initrd={initrd_base:#x},{initrd_size:#x} rdinit=/init \
         mem={}M panic=-1 {probes}",
        linux_ram >> 20
    )
}

fn qemu_base(extra: &str, smp: u32, disk: &Path) -> Command {
    // SVE and SME stay on in the CPU model: the engine traps them for the
    // host (CPTR_EL2.TZ/TSM) and hides them from its ID registers
    // (HCR_EL2.TID3), so the kernel never enables them (docs/linux-host.md).
    let mut c = crate::machine::virt(extra, smp, &format!("{RAM_MIB}M"));
    // A read-only disk on virtio-blk-pci (00:01.0): the host drives a
    // device (MMIO, its interrupt, its DMA into host RAM) with the engine
    // beneath; `iommu_platform=on` (which needs `disable-legacy=on`) makes
    // its DMA go through the SMMU, as every PCI device's must. Then QEMU's
    // `edu` (00:02.0), whose DMA engine the init script aims at engine
    // memory.
    c.arg("-drive")
        .arg(format!(
            "if=none,id=disk0,format=raw,readonly=on,file={}",
            disk.display()
        ))
        .args([
            "-device",
            "virtio-blk-pci,drive=disk0,iommu_platform=on,disable-legacy=on",
            "-device",
            crate::qemu::EDU,
        ]);
    c
}

fn initrd_placement(assets: &Assets) -> Result<(u64, u64), String> {
    let size = std::fs::metadata(&assets.initramfs)
        .map_err(|e| format!("initramfs: {e}"))?
        .len();
    let base = INITRD_BASE.max(align_up_2m(HOST_ENTRY + assets.image_size));
    if base + size > RAM_END - HOST_RAM_PROBE_MARGIN {
        return Err("the initramfs does not fit below the probe margin".to_string());
    }
    Ok((base, size))
}

/// Debian's kernel on isola: the engine at EL2 (`-kernel`), the `Image` at
/// the host entry and the initramfs, both by QEMU's generic loader as raw
/// bytes.
fn isola_command(engine: &Path, assets: &Assets, smp: u32, end: End) -> Result<Command, String> {
    let (initrd_base, initrd_size) = initrd_placement(assets)?;
    // Linux sees RAM from the end of the engine's carve-out (the engine's
    // device-tree edit) and is told to manage all but the probe margin.
    let shown = RAM_END - ENGINE_END;
    let mut probes = format!(
        "isola.probe_host={HOST_PROBE:#x} isola.probe_engine={ENGINE_PROBE:#x} isola.dma=1"
    );
    if end == End::Reset {
        probes.push_str(" isola.end=reboot");
    }
    // highmem=off: QEMU virt then puts the PCIe ECAM below RAM, inside the
    // one device range the engine gives the host (every non-RAM address
    // below RAM); with highmem the ECAM (at 256 GiB) and the 512 GiB 64-bit
    // PCIe window lie above RAM, where the engine maps nothing for the host.
    let mut c = qemu_base(",highmem=off", smp, &assets.disk);
    c.arg("-kernel")
        .arg(engine)
        .arg("-device")
        .arg(format!(
            "loader,file={},addr={HOST_ENTRY:#x},force-raw=on",
            assets.image.display()
        ))
        .arg("-device")
        .arg(format!(
            "loader,file={},addr={initrd_base:#x},force-raw=on",
            assets.initramfs.display()
        ))
        .args([
            "-append",
            &cmdline(
                initrd_base,
                initrd_size,
                shown - HOST_RAM_PROBE_MARGIN,
                &probes,
            ),
        ]);
    Ok(c)
}

/// Debian's kernel straight on QEMU at EL1 (no EL2 at all), the reference
/// for timing and console lines. Here QEMU loads the initramfs itself and
/// names it in the device tree (`-initrd`); there is no engine memory to probe.
fn bare_command(assets: &Assets, smp: u32) -> Command {
    let linux_ram = (RAM_MIB << 20) - HOST_RAM_PROBE_MARGIN;
    // The same machine without EL2: Linux is entered at EL1 directly.
    let mut c = qemu_base(",highmem=off", smp, &assets.disk);
    c.args(["-machine", "virtualization=off"]);
    c.arg("-kernel")
        .arg(&assets.image)
        .arg("-initrd")
        .arg(&assets.initramfs)
        .args([
            "-append",
            &format!(
                "console=ttyAMA0 earlycon rdinit=/init mem={}M panic=-1 isola.probe_host={HOST_PROBE:#x}",
                linux_ram >> 20
            ),
        ]);
    c
}

// ---------------------------------------------------------------------------
// Judging

/// A console line without the kernel's `[ seconds.micros] ` prefix.
pub(crate) fn untimed(line: &str) -> &str {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix('[')
        && let Some((stamp, after)) = rest.split_once(']')
        && stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return after.strip_prefix(' ').unwrap_or(after);
    }
    line
}

/// What must appear, in this order: each entry's fragments must all be in
/// one untimed console line, the first at its start, the others after it in
/// order (so a PID may vary between them).
fn story(smp: u32, end: End) -> Vec<Vec<String>> {
    // "0-7" for 8 CPUs, "0" for one.
    let online = |n: u32| match n {
        0 | 1 => "0".to_string(),
        n => format!("0-{}", n - 1),
    };
    let one = |s: String| vec![s];
    // The kernel's report of each refused probe: a data abort from EL0 whose
    // syndrome is the engine's synchronous external abort (DFSC 0x10; WnR
    // set for the write).
    let sea = |esr: &str| {
        vec![
            "isola-linux: kernel: devmem[".to_string(),
            format!(
                "]: unhandled exception: DABT (lower EL), ESR {esr}, synchronous external abort"
            ),
        ]
    };
    let mut story = vec![
        one(format!(
            "isola: entering the host at {HOST_ENTRY:#x} on cpu 0 at EL1"
        )),
        one("Booting Linux on physical CPU 0x0000000000".to_string()),
        one("psci: PSCIv1.1 detected in firmware.".to_string()),
        one(format!(
            "smp: Brought up 1 node, {smp} CPU{}",
            if smp > 1 { "s" } else { "" }
        )),
        one("CPU: All CPU(s) started at EL1".to_string()),
        one("Run /init as init process".to_string()),
        one("isola-linux: init running on Linux ".to_string()),
        one(format!(
            "isola-linux: cpus online {}, {smp} in /proc/cpuinfo",
            online(smp)
        )),
    ];
    if smp > 1 {
        let last = smp - 1;
        story.push(one(format!(
            "isola-linux: cpu {last} offline: online {}",
            online(last)
        )));
        story.push(one(format!(
            "isola-linux: cpu {last} back online: online {}",
            online(smp)
        )));
    }
    story.extend([
        one(format!(
            "isola-linux: virtio-blk-pci disk vda, sector 0: {}",
            disk_label(0)
        )),
        one(format!(
            "isola-linux: virtio-blk-pci disk vda, sector {}: {}",
            DISK_SECTORS - 1,
            disk_label(DISK_SECTORS - 1)
        )),
        one("isola-linux: virtio-blk-pci interrupts taken: ".to_string()),
        one(format!(
            "isola-linux: host RAM at {HOST_PROBE:#x}: devmem write and read back ok"
        )),
        one(format!(
            "isola-linux: edu at 0000:00:02.0: DMA copied host RAM at {HOST_PROBE:#x} to {:#x}: 0x15015A1A",
            HOST_PROBE - 0x1000
        )),
        one(format!(
            "isola-linux: edu DMA read of engine memory at {ENGINE_PROBE:#x}: the device got 0x00000000, not the device tree's magic"
        )),
        one(format!(
            "isola-linux: edu DMA write into engine memory at {ENGINE_PROBE:#x}: done, the kernel carries on"
        )),
        // The engine reports what its SMMU refused when the host next
        // traps to it (the devmem probe below).
        vec![
            "isola: SMMU: blocked ".to_string(),
            format!(
                " DMA access(es) from StreamID 0x10 (F_TRANSLATION, read of page {ENGINE_PROBE:#x})"
            ),
        ],
        vec![
            "isola: SMMU: blocked ".to_string(),
            format!(
                " DMA access(es) from StreamID 0x10 (F_TRANSLATION, write of page {ENGINE_PROBE:#x})"
            ),
        ],
        one(format!(
            "isola-linux: engine memory at {ENGINE_PROBE:#x}: devmem read killed by SIGBUS"
        )),
        one(format!(
            "isola-linux: engine memory at {ENGINE_PROBE:#x}: devmem write killed by SIGBUS"
        )),
        sea("0x0000000092000010"),
        sea("0x0000000092000050"),
        one("isola-linux: kernel still running: ".to_string()),
    ]);
    story.extend(match end {
        End::PowerOff => [
            one("isola-linux: powering off".to_string()),
            one("reboot: Power down".to_string()),
            one("isola: power off (host called PSCI SYSTEM_OFF); exit status: ok".to_string()),
        ],
        End::Reset => [
            one("isola-linux: rebooting".to_string()),
            one("reboot: Restarting system".to_string()),
            one("isola: host called PSCI SYSTEM_RESET".to_string()),
        ],
    });
    story
}

/// Whether `line` holds `fragments` as [`story`] describes.
pub(crate) fn tells(line: &str, fragments: &[String]) -> bool {
    let Some((first, rest)) = fragments.split_first() else {
        return true;
    };
    let Some(mut tail) = line.strip_prefix(first.as_str()) else {
        return false;
    };
    for f in rest {
        match tail.find(f.as_str()) {
            Some(at) => tail = &tail[at + f.len()..],
            None => return false,
        }
    }
    true
}

/// Any of these anywhere fails the run: kernel oopses, panics, warnings,
/// stalls and CPUs that did not come up, and engine failures.
pub(crate) const FORBIDDEN: &[&str] = &[
    "Oops",
    "Kernel panic",
    "Unable to handle kernel",
    "Internal error:",
    "Call trace:",
    "BUG:",
    "WARNING:",
    "rcu: INFO",
    "failed to come online",
    "isola: FATAL",
    "exit status: failure",
    "NOT refused",
    "failed with status",
    "the device got the device tree",
    "edu not found",
];

fn judge(run: &Run, smp: u32, end: End) -> Result<(), String> {
    if run.timed_out {
        return Err(format!(
            "killed at the {} s deadline",
            run.elapsed.as_secs_f64().round()
        ));
    }
    for line in &run.lines {
        if let Some(bad) = FORBIDDEN.iter().find(|f| line.contains(*f)) {
            return Err(format!("console line contains {bad:?}: {line}"));
        }
    }
    let mut lines = run.lines.iter().map(|l| untimed(l));
    for want in story(smp, end) {
        if !lines.any(|l| tells(l, &want)) {
            return Err(format!(
                "missing (or out of order) console line: {}",
                want.join("...")
            ));
        }
    }
    if run.code != Some(0) {
        return Err(format!("QEMU exited with {:?}", run.code));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_records_are_aligned_and_end_with_the_trailer() {
        let a = cpio(&[Member {
            name: "init",
            mode: 0o100755,
            rdev: (0, 0),
            data: b"#!x\n\x01",
        }])
        .unwrap();
        assert_eq!(&a[..6], b"070701");
        // Header fields: ino 1, mode, ..., filesize 5, ..., namesize 5.
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000081ed");
        assert_eq!(&a[54..62], b"00000005");
        assert_eq!(&a[94..102], b"00000005");
        // 110 + "init\0" = 115, padded to 116; data 5 padded to 8.
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..121], b"#!x\n\x01");
        assert_eq!(a.len() % 4, 0);
        let trailer = &a[124..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
    }

    #[test]
    fn image_header_checks() {
        let mut h = vec![0_u8; 64];
        assert!(image_header(&h).is_err());
        h[0x38..0x3c].copy_from_slice(b"ARM\x64");
        h[16..24].copy_from_slice(&0x0259_0000_u64.to_le_bytes());
        h[24..32].copy_from_slice(&0b010_u64.to_le_bytes());
        assert_eq!(image_header(&h), Ok(0x0259_0000));
        h[8..16].copy_from_slice(&0x8_0000_u64.to_le_bytes());
        assert!(image_header(&h).unwrap_err().contains("text_offset"));
        h[8..16].copy_from_slice(&0_u64.to_le_bytes());
        h[24] = 1;
        assert!(image_header(&h).unwrap_err().contains("big-endian"));
    }

    #[test]
    fn vmlinuz_formats() {
        let mut raw = vec![0_u8; 64];
        raw[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(unpack_vmlinuz(&raw).unwrap(), raw);
        assert!(unpack_vmlinuz(&[0_u8; 64]).is_err());
    }

    #[test]
    fn fragments_match_in_order_from_the_start() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(tells("a 1 b 2 c", &f(&["a", "b", "c"])));
        assert!(!tells("x a b c", &f(&["a", "b"])));
        assert!(!tells("a c b", &f(&["a", "b", "c"])));
    }

    #[test]
    fn kernel_timestamps_are_stripped() {
        assert_eq!(untimed("[    1.234567] smp: Brought up"), "smp: Brought up");
        assert_eq!(untimed("isola: power off"), "isola: power off");
        assert_eq!(untimed("[x] y"), "[x] y");
    }

    fn run_of(lines: &[&str]) -> Run {
        Run {
            lines: lines.iter().map(|s| s.to_string()).collect(),
            stderr: String::new(),
            code: Some(0),
            timed_out: false,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_judge_wants_the_whole_story_and_nothing_forbidden() {
        let story: Vec<String> = story(2, End::PowerOff)
            .iter()
            .map(|f| f.join("136"))
            .collect();
        let good: Vec<&str> = story.iter().map(String::as_str).collect();
        assert_eq!(judge(&run_of(&good), 2, End::PowerOff), Ok(()));
        let mut missing = good.clone();
        let read_probe = missing
            .iter()
            .position(|l| l.contains("devmem read killed by SIGBUS"))
            .unwrap();
        missing.remove(read_probe);
        assert!(
            judge(&run_of(&missing), 2, End::PowerOff)
                .unwrap_err()
                .contains("SIGBUS")
        );
        let mut oops = good.clone();
        oops.insert(3, "[    2.000000] Internal error: Oops: 96000010 [#1] SMP");
        assert!(judge(&run_of(&oops), 2, End::PowerOff).is_err());
        // A reset run tells a different ending.
        assert!(judge(&run_of(&good), 2, End::Reset).is_err());
        let mut swapped = good.clone();
        swapped.swap(0, 1);
        assert!(judge(&run_of(&swapped), 2, End::PowerOff).is_err());
    }
}
