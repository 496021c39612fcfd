-- A widget's slots move into its own row: the materializer writes one row per
-- touched widget instead of four (the row and three widget_slots rows), which
-- at 10M widgets was the largest table (3.6 GB) and the busiest statement of
-- the mixed load. slot<i> is the partner's serial in slot i (of type
-- substr(ports, i + 1, 1)), '' when free, past the widget's ports or once the
-- widget is deleted: as the processor's processor_widgets stores it.
ALTER TABLE widgets
    ADD COLUMN slot0 TEXT NOT NULL DEFAULT '',
    ADD COLUMN slot1 TEXT NOT NULL DEFAULT '',
    ADD COLUMN slot2 TEXT NOT NULL DEFAULT '';

UPDATE widgets w
   SET slot0 = coalesce((SELECT partner FROM widget_slots s WHERE s.serial = w.serial AND s.slot = 0), ''),
       slot1 = coalesce((SELECT partner FROM widget_slots s WHERE s.serial = w.serial AND s.slot = 1), ''),
       slot2 = coalesce((SELECT partner FROM widget_slots s WHERE s.serial = w.serial AND s.slot = 2), '')
 WHERE EXISTS (SELECT 1 FROM widget_slots s WHERE s.serial = w.serial AND s.partner <> '');

DROP VIEW widget_associations;
DROP TABLE widget_slots;

-- The associations, one row per end (so each association twice, once from each widget).
CREATE VIEW widget_associations AS
    SELECT w.serial, s.partner AS with_serial, substr(w.ports, s.slot + 1, 1) AS port
      FROM widgets w
     CROSS JOIN LATERAL (VALUES (0, w.slot0), (1, w.slot1), (2, w.slot2)) AS s (slot, partner)
     WHERE s.partner <> '';
