"""Instances per second that ``pulmoscreen receive`` stores: one association against four.

A real ``pulmoscreen receive`` process stores into a fresh drop folder (each instance written,
fsynced and renamed before Success is answered, as in production). Senders are pynetdicom SCUs in
their own processes, so the sending side's Python does not share a GIL with itself; each sends
its share of ``--instances`` distinct instances over one association, all starting together. The
rate is instances over the wall time from the common start to the last response. Two payloads:
RG1 from pydicom-data (a 1955 x 1841 chest CR, 7.2 MB uncompressed) and a small 256 x 256
synthetic CR (about 130 kB), where per-instance costs dominate.

Usage::

    python -m benchmarks.receive [--instances 48] [--folder DIR]

``--folder`` puts the drop folder on the disk to measure (default: a temporary folder). The last
line is ``receive: ...`` with both figures and their ratio per payload.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import Dataset, uid
from pydicom.data import get_testdata_file

from pulmoscreen.synthetic import make_cxr_dicom
from tests.dicom_scu import free_port, send, start_receiver, stop


@dataclass(frozen=True)
class Payload:
    name: str
    path: Path


def copies(path: Path, *, first: int, count: int) -> list[Dataset]:
    """``count`` copies of the DICOM at ``path``, each a distinct instance."""
    datasets = []
    for index in range(first, first + count):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=["bench receive", str(index)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
    return datasets


def _sender(port: int, path: Path, first: int, count: int, barrier: object, out: object) -> None:
    datasets = copies(path, first=first, count=count)
    barrier.wait()  # type: ignore[attr-defined]
    start = time.perf_counter()
    statuses = send(port, datasets)
    out.put((start, time.perf_counter(), statuses.count(0)))  # type: ignore[attr-defined]


def rate(port: int, payload: Payload, *, instances: int, associations: int, first: int) -> float:
    """Instances per second over ``associations`` concurrent associations."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(associations), ctx.Queue()
    share = instances // associations
    procs = [
        ctx.Process(
            target=_sender, args=(port, payload.path, first + i * share, share, barrier, out)
        )
        for i in range(associations)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    stored = sum(ok for _, _, ok in results)
    if stored != share * associations:
        raise RuntimeError(f"only {stored} of {share * associations} instances were stored")
    start = min(begin for begin, _, _ in results)
    end = max(finish for _, finish, _ in results)
    return stored / (end - start)


def measure(port: int, inbox: Path, payload: Payload, *, instances: int) -> str:
    """One payload's line: one association, four, their ratio."""
    size_mb = payload.path.stat().st_size / 1e6
    rate(port, payload, instances=4, associations=1, first=10**6)  # warm-up
    one = rate(port, payload, instances=instances, associations=1, first=0)
    clear(inbox)
    four = rate(port, payload, instances=instances, associations=4, first=10**5)
    clear(inbox)
    return (
        f"receive {payload.name} ({size_mb:.2f} MB): 1 association {one:.1f} inst/s "
        f"({one * size_mb:.0f} MB/s), 4 associations {four:.1f} inst/s "
        f"({four * size_mb:.0f} MB/s), ratio {four / one:.2f}"
    )


def clear(inbox: Path) -> None:
    for path in inbox.iterdir():
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=48, help="per run (a multiple of 4)")
    parser.add_argument("--folder", type=Path, help="drop folder parent (default: temporary)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-receive-", dir=args.folder))
    small = make_cxr_dicom(work / "src", rows=256, cols=256, seed=7, filename="small.dcm")
    payloads = [
        Payload("RG1 chest CR", Path(get_testdata_file("RG1_UNCR.dcm"))),
        Payload("256 px CR", small),
    ]
    inbox, port = work / "inbox", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULMO_")}
    receiver = start_receiver(inbox, port, env=env, log=work / "receive.log")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {inbox}")
    try:
        lines = [measure(port, inbox, p, instances=args.instances) for p in payloads]
    finally:
        stop(receiver)
        shutil.rmtree(work)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
