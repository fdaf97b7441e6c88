-- Schema version 2: a node that reads an item to deliver it claims it for a while, so
-- that another node asked for the same item at the same time skips it (the delivery
-- is removed on the callee's 2xx; a claim of a node that died lapses).
ALTER TABLE item
    ADD COLUMN claimed_by TEXT,
    ADD COLUMN claimed_until BIGINT;
