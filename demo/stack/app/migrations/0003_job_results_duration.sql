-- v2: the worker records how long each job took. Adding a nullable column keeps v1's code working.
ALTER TABLE job_results ADD COLUMN duration_ms INT NULL;
