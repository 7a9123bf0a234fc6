//! The one place every QEMU command line of the project starts, the guard
//! that proves no run needs a QEMU data file, and the install of QEMU itself.
//!
//! Invariants:
//! - Every QEMU run (booted scenarios, the Linux host, the benchmark, the
//!   device-tree dump) is built by [`virt`]: `-nodefaults`, so QEMU adds no
//!   device the run does not name (the default network card of QEMU virt
//!   wants `efi-virtio.rom` from `ipxe-qemu`, which a fresh machine lacks),
//!   and the console on the first PL011 through `-serial stdio`.
//! - The test command runs every booted scenario and every Linux boot under
//!   [`without_data_files`]: QEMU's data directories are empty for it, so a
//!   run that would need a ROM, a firmware or a keymap fails on every
//!   machine, including one that has all of QEMU's optional packages.

use std::process::{Command, Stdio};

/// QEMU virt as every run of the project uses it: EL2 (`virtualization=on`)
/// and a GICv3 (its ITS on: QEMU's PCI devices need an MSI controller to
/// exist; the engine withholds it from the host), an SMMUv3 on the PCIe
/// bus (`iommu=smmuv3`) translating at stage 2 (`stage=2`; the default is
/// stage 1 only), the PCIe ECAM and
/// windows below 4 GiB (`highmem-ecam=off,highmem-mmio=off`: the engine
/// maps device ranges page by page, and a 512 GiB window would not fit its
/// reserve), plus `extra` machine options (say `,highmem=off`); the CPU
/// model the engine is tested on; `-nodefaults`, then exactly the console:
/// the first PL011 on QEMU's standard output, no monitor, no display; and
/// no reboot (a reset ends the run).
pub fn virt(extra: &str, smp: u32, mem: &str) -> Command {
    let mut c = Command::new(QEMU);
    c.arg("-nodefaults")
        .args([
            "-machine",
            &format!(
                "virt,virtualization=on,gic-version=3,iommu=smmuv3,highmem-ecam=off,highmem-mmio=off{extra}"
            ),
        ])
        .args(["-global", "arm-smmuv3.stage=2"])
        .args(["-cpu", "max,pauth-impdef=on"])
        .args(["-m", mem])
        .args(["-smp", &smp.to_string()])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"]);
    c
}

/// The QEMU binary every run uses.
pub const QEMU: &str = "qemu-system-aarch64";

/// The shell script [`without_data_files`] runs QEMU through, inside a new
/// user and mount namespace: an empty read-only tmpfs over every directory
/// `qemu -L help` names (QEMU's data directory, its firmware path: seabios,
/// ipxe), a check that each is empty, then QEMU itself (`"$@"`).
const GUARD_SCRIPT: &str = r#"set -eu
for d in $("$1" -L help); do
  if [ -d "$d" ]; then
    mount -t tmpfs -o ro,size=4k isola-empty "$d"
    [ -z "$(ls -A "$d")" ] || { echo "isola guard: $d is not empty" >&2; exit 97; }
  fi
done
exec "$@""#;

/// `cmd` (a QEMU command line from [`virt`]) run so that QEMU finds none
/// of its optional data files: in a private mount namespace (`unshare
/// --user --map-root-user --mount`, which needs no privilege where user
/// namespaces are enabled, as on Debian) every data directory QEMU searches
/// is an empty tmpfs. Environment and working directory carry over.
pub fn without_data_files(cmd: &Command) -> Command {
    let mut g = Command::new("unshare");
    g.args(["--user", "--map-root-user", "--mount", "--"])
        .args(["sh", "-c", GUARD_SCRIPT, "isola-qemu-guard"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        g.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => g.env(k, v),
            None => g.env_remove(k),
        };
    }
    g
}

/// Checks that [`without_data_files`] can run here, so its failure is
/// never mistaken for a QEMU failure.
pub fn guard_available() -> Result<(), String> {
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the QEMU data-file guard needs user and mount namespaces \
             (`unshare --user --map-root-user --mount true` failed: {}); \
             on Debian, `sysctl kernel.unprivileged_userns_clone=1`",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The oldest QEMU the project runs on: 8.1, the first whose SMMUv3 model
/// translates at stage 2 (`-global arm-smmuv3.stage=2`), which the engine's
/// DMA isolation needs.
pub const QEMU_MIN: (u32, u32) = (8, 1);

/// The installed QEMU's version, if it runs.
pub fn qemu_version() -> Option<(u32, u32)> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// `(major, minor)` from `QEMU emulator version 10.0.2 (Debian ...)`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split("version ").nth(1)?.split_whitespace().next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The Debian suite that carries a new enough QEMU for Debian 12
/// (bookworm): bookworm-backports has 10.0.2.
const BACKPORTS: &str = "bookworm-backports";
/// Where the install step declares that suite, if apt does not know it yet.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/isola-bookworm-backports.sources";

/// QEMU is the one tool outside the toolchain. If `qemu-system-aarch64` is
/// missing or older than [`QEMU_MIN`], install Debian's `qemu-system-arm`
/// where we can (root with apt-get), from bookworm-backports on Debian 12,
/// and without recommended packages: the project needs none of them
/// (docs/testing.md lists what is installed and why).
pub fn ensure_qemu() -> Result<(), String> {
    let new_enough = |v: Option<(u32, u32)>| v.is_some_and(|v| v >= QEMU_MIN);
    let found = qemu_version();
    if new_enough(found) {
        return Ok(());
    }
    let why = match found {
        Some((a, b)) => format!("QEMU {a}.{b} is older than {}.{}", QEMU_MIN.0, QEMU_MIN.1),
        None => format!("{QEMU} not found"),
    };
    let have_apt = Command::new("apt-get")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if crate::cmd::is_root() && have_apt {
        let bookworm = std::fs::read_to_string("/etc/os-release")
            .is_ok_and(|s| s.lines().any(|l| l == "VERSION_CODENAME=bookworm"));
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        if bookworm {
            println!("{why}: installing qemu-system-arm from Debian's {BACKPORTS}");
            add_backports()?;
            install.args(["-t", BACKPORTS]);
        } else {
            println!("{why}: installing Debian's qemu-system-arm");
        }
        let mut update = Command::new("apt-get");
        update.args(["update", "-q"]);
        crate::cmd::run(update)?;
        install.arg("qemu-system-arm");
        crate::cmd::run(install)?;
        if new_enough(qemu_version()) {
            return Ok(());
        }
    }
    Err(format!(
        "{why}; QEMU {}.{} or newer is required and could not be installed here: \
         on Debian 12 run `sudo apt-get install -t {BACKPORTS} --no-install-recommends \
         qemu-system-arm` (with {BACKPORTS} in apt's sources), elsewhere install your \
         distribution's qemu-system-aarch64, then run again",
        QEMU_MIN.0, QEMU_MIN.1
    ))
}

/// Declares bookworm-backports to apt (Debian's own archive and key) unless
/// some source already names it.
fn add_backports() -> Result<(), String> {
    let known = Command::new("apt-cache")
        .arg("policy")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("a={BACKPORTS}")));
    if known {
        return Ok(());
    }
    let source = format!(
        "# Added by isola's `cargo xtask` for QEMU >= {}.{} (docs/testing.md).\n\
         Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {BACKPORTS}\n\
         Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        QEMU_MIN.0, QEMU_MIN.1
    );
    std::fs::write(BACKPORTS_SOURCE, source).map_err(|e| format!("writing {BACKPORTS_SOURCE}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"),
            Some((10, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"),
            Some((7, 2))
        );
        assert_eq!(parse_version("something else"), None);
        assert!((7, 2) < QEMU_MIN && (10, 0) >= QEMU_MIN && (8, 1) >= QEMU_MIN);
    }

    #[test]
    fn every_run_starts_without_defaults() {
        let c = virt(",highmem=off", 2, "2G");
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args.first().map(String::as_str), Some("-nodefaults"));
        assert!(
            args.iter()
                .any(|a| a
                    == "virt,virtualization=on,gic-version=3,iommu=smmuv3,highmem-ecam=off,highmem-mmio=off,highmem=off")
        );
        let guarded = without_data_files(&c);
        let gargs: Vec<_> = guarded
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(guarded.get_program(), "unshare");
        assert!(
            gargs.ends_with(&args),
            "QEMU's own arguments pass through unchanged"
        );
    }
}
