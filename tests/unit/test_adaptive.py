"""How many jobs a backlog asks for, and when surplus jobs are released (no batch system)."""

from hyperloom.cluster import adaptive


def info(ready=0, assigned=0, unplaceable=()):
    return {"tasks": {"waiting": 5, "ready": ready, "assigned": assigned, "finished": 3},
            "unplaceable": [{"id": i, "n_cpus": n, "type": "run", "reason": "r"}
                            for i, n in unplaceable]}


def test_ready_and_running_tasks_ask_for_one_core_each():
    need = adaptive.backlog(info(ready=7, assigned=3), cpus_per_worker=2)
    assert need.cpus_wanted == 10 and need.busy
    assert adaptive.jobs_wanted(need, cpus_per_job=4, minimum=0, maximum=100) == 3
    assert adaptive.jobs_wanted(need, cpus_per_job=4, minimum=0, maximum=2) == 2


def test_unplaceable_tasks_count_their_cores_and_too_big_ones_are_reported():
    # 4 ready tasks, of which two are unplaceable: one needs 3 cores, one 16 (> a worker).
    need = adaptive.backlog(info(ready=4, unplaceable=[(1, 3), (2, 16)]), cpus_per_worker=4)
    assert need.cpus_wanted == 2 + 3
    assert need.too_big == (2,)
    assert need.busy


def test_no_backlog_asks_for_the_minimum():
    need = adaptive.backlog(info(), cpus_per_worker=1)
    assert need.cpus_wanted == 0 and not need.busy
    assert adaptive.jobs_wanted(need, 1, minimum=2, maximum=5) == 2


def test_surplus_is_released_only_after_lasting_the_idle_timeout():
    shrink = adaptive.Shrink(idle_timeout=10)
    assert shrink.surplus(current=3, wanted=1, now=100) == 0
    assert shrink.surplus(current=3, wanted=1, now=105) == 0
    assert shrink.surplus(current=3, wanted=3, now=106) == 0      # work came back: reset
    assert shrink.surplus(current=3, wanted=0, now=107) == 0
    assert shrink.surplus(current=3, wanted=0, now=116.9) == 0
    assert shrink.surplus(current=3, wanted=0, now=117) == 3


def test_retiring_workers_count_as_leaving_and_their_data_asks_for_a_worker():
    retiring = {**info(), "workers": [{"id": 1, "retiring": True}]}
    need = adaptive.backlog(retiring, cpus_per_worker=1)
    assert need.retiring == 1 and need.cpus_wanted == 1, "its data needs a new home"
    assert adaptive.retiring_jobs(need, workers_per_job=2) == 1
    mixed = {**info(ready=3), "workers": [{"id": 1, "retiring": True}, {"id": 2}]}
    need = adaptive.backlog(mixed, cpus_per_worker=1)
    assert need.retiring == 1 and need.cpus_wanted == 3
