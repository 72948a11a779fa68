-- v3: every result counts its attempts; the rows already there count one.
ALTER TABLE job_results ADD COLUMN attempts INT NOT NULL DEFAULT 1;
