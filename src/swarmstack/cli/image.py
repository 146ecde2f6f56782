"""``swarm image``: build and list the images VM sandboxes boot."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from swarmstack.cli.common import JsonOption, console, guarded, print_json

app = typer.Typer(help="The Debian images VM sandboxes boot.", no_args_is_help=True)

ImagesDirOption = typer.Option(
    None,
    "--images-dir",
    envvar="SWARM_IMAGES_DIR",
    help="Where images are kept (default /var/lib/swarm/images as root).",
)


@app.command("build")
@guarded
def build(
    package: list[str] = typer.Option(
        [], "--package", "-p", help="An extra Debian package for the image (repeatable)."
    ),
    suite: str = typer.Option("bookworm", "--suite", help="The Debian release."),
    mirror: str = typer.Option("http://deb.debian.org/debian", "--mirror", help="Debian mirror."),
    no_claude: bool = typer.Option(False, "--no-claude", help="Leave out Claude Code."),
    no_runner: bool = typer.Option(False, "--no-runner", help="Leave out the Swarm runner."),
    kernel: str = typer.Option(
        "cloud",
        "--kernel",
        help="Debian's kernel flavour: cloud (made for VMs, boots faster) or generic.",
    ),
    force: bool = typer.Option(False, "--force", help="Build again even if it is cached."),
    images_dir: Path | None = ImagesDirOption,
    json_out: bool = JsonOption,
) -> None:
    """Build the VM image: debootstrap root, ext4 image, Debian's kernel and an initramfs.
    Cached by a hash of its inputs: the same inputs are built once."""
    import re

    from swarmstack.errors import UsageError
    from swarmstack.sandbox import image

    for name in package:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", name):
            raise UsageError(f"{name!r} is not a Debian package name")
    config = image.ImageConfig(
        suite=suite,
        mirror=mirror,
        packages=tuple(package),
        claude=not no_claude,
        runner=not no_runner,
        kernel=kernel,
    )
    started = time.monotonic()
    with console.status("building the image", spinner="dots") as status:

        def progress(step: str) -> None:
            elapsed = time.monotonic() - started
            status.update(f"[bold]{step}[/] ({elapsed:.0f} s)")
            if not json_out:
                console.print(f"[dim]{elapsed:5.0f} s[/]  {step}", highlight=False)

        built = image.build(config, images_dir, force=force, progress=progress)
    summary = {"key": built.key, "path": str(built.path), **built.manifest}
    if json_out:
        print_json(summary)
    else:
        console.print(f"image [bold]{built.key}[/] at {built.path}")


@app.command("ls")
@guarded
def ls(images_dir: Path | None = ImagesDirOption, json_out: bool = JsonOption) -> None:
    """The images built here, newest last."""
    from rich.table import Table

    from swarmstack.sandbox import image

    root = images_dir or image.default_images_dir()
    found = [image.Image.load(p.parent) for p in sorted(root.glob("*/manifest.json"))]
    found.sort(key=lambda i: float(str(i.manifest.get("built_at", 0))))
    if json_out:
        print_json([{"key": i.key, "path": str(i.path), **i.manifest} for i in found])
        return
    table = Table("key", "kernel", "packages", "rootfs", "built")
    for i in found:
        config = i.manifest.get("config", {})
        packages = ", ".join(config.get("packages", [])) if isinstance(config, dict) else ""
        size = int(str(i.manifest.get("rootfs_bytes", 0))) >> 20
        built_at = time.strftime(
            "%Y-%m-%d %H:%M", time.localtime(float(str(i.manifest.get("built_at", 0))))
        )
        table.add_row(
            i.key, str(i.manifest.get("kernel_version")), packages, f"{size} MiB", built_at
        )
    console.print(table if found else f"no images in {root}: run 'swarm image build'")
