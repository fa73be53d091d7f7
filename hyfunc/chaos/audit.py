"""The job_audit trigger: every UPDATE of a job row is recorded, so SQL can prove that each job
reached exactly one terminal state. Test-only: the reliability suite (hyfunc/chaos/reliability.py)
and the service tests (tests/service/conftest.py) install it; no migration ever does."""

AUDIT_SQL = """
CREATE TABLE job_audit (job_id uuid, old_status text, new_status text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION audit_jobs() RETURNS trigger AS $$
BEGIN INSERT INTO job_audit (job_id, old_status, new_status) VALUES (NEW.id, OLD.status, NEW.status); RETURN NEW; END
$$ LANGUAGE plpgsql;
CREATE TRIGGER jobs_audit AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION audit_jobs();
"""
