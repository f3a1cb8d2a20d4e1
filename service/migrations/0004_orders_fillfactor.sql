-- A status change rewrites the order's row. With room left on its page, PostgreSQL writes the new row
-- version beside the old one and leaves the indexes alone (a HOT update: no indexed column changes);
-- on a full page it must insert into both of the table's indexes too. Pages of new orders now keep 30%
-- free for those changes (existing pages keep their fill until rewritten).
ALTER TABLE orders SET (fillfactor = 70);
