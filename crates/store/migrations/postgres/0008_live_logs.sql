-- The tail of a running attempt's output, published by its worker while it
-- runs (JSON: {"stdout": "...", "stderr": "..."}), so the workbench can show
-- it live from any server. It lives on the lease: it goes when the attempt
-- ends, and a new attempt's lease starts without one.
ALTER TABLE leases ADD COLUMN live_log TEXT;
