"""The run life cycle, the domain of the cleanup activities (which are thin shells around it):
executing a part of an iteration, missed slots, planning the next run, failure streaks, time-outs,
the retention backlog and this worker's identity. No Durable Task SDK here."""
