"""The broker: holds the DAG of every plan, schedules tasks, orders transfers."""
