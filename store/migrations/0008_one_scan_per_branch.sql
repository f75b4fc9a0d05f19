-- One scan of a branch at a time (issue 13): a task is not leased while
-- another job's task of the same branch is leased, so two full scans never
-- delete each other's findings. The lease query looks leased tasks up by
-- branch.
create index scan_tasks_leased_branch on scan_tasks (repository_id, branch) where state = 'leased';
