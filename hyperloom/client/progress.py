"""A tqdm progress bar of a client's tasks, fed by the broker's batched TasksFinished."""

from __future__ import annotations


class ProgressBar:
    def __init__(self, client):
        from tqdm import tqdm
        self.client = client
        done, total = client.progress
        self.bar = tqdm(total=total, initial=done, unit="task", desc="hyperloom")

    def update(self):
        done, total = self.client.progress
        if total != self.bar.total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self):
        self.update()
        self.bar.close()
