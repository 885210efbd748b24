"""System metrics of the machine a worker runs on, named as MLflow's System Metrics tab expects.

Sampled by the training loop itself (no thread) and sent through the run
tracker, so they are buffered through a tracking outage like every other metric.
"""

from __future__ import annotations

import os
import time

import psutil
import torch

MB = 2**20


class SystemSampler:
    def __init__(self, every_s: float, disk_path: str | None = None):
        self.every_s = every_s
        self.disk_path = disk_path or os.getcwd()
        self.process = psutil.Process()
        self.last = float("-inf")
        psutil.cpu_percent()  # the first reading only starts the interval

    def due(self) -> bool:
        return self.every_s > 0 and time.monotonic() - self.last >= self.every_s

    def sample(self) -> dict[str, float]:
        self.last = time.monotonic()
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk_path)
        network = psutil.net_io_counters()
        metrics = {
            "system/cpu_utilization_percentage": psutil.cpu_percent(),
            "system/system_memory_usage_megabytes": (memory.total - memory.available) / MB,
            "system/system_memory_usage_percentage": memory.percent,
            "system/process_memory_rss_megabytes": self.process.memory_info().rss / MB,
            "system/disk_usage_percentage": disk.percent,
            "system/disk_available_megabytes": disk.free / MB,
            "system/network_receive_megabytes": network.bytes_recv / MB,
            "system/network_transmit_megabytes": network.bytes_sent / MB,
        }
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                metrics[f"system/gpu_{index}_memory_usage_megabytes"] = torch.cuda.memory_reserved(index) / MB
        return metrics
