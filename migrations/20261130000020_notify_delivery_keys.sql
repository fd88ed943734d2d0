-- A delivery row is keyed by what it delivers, (notification, channel, target), which the
-- unique index already held: the surrogate `id` was a second index insert per push and nothing
-- read it. The foreign key to notifications goes too: its check ran per inserted row and
-- locked the notification's row for each (a sixth of Postgres's time in a push run,
-- bench/results/notify.md, run 7), for rows that `notify.deliver` writes only for
-- notifications it has just read. Nothing deletes notifications; a retention sweep, when one
-- comes, must delete their delivery rows with them.
ALTER TABLE notification_deliveries DROP CONSTRAINT notification_deliveries_notification_id_fkey;
ALTER TABLE notification_deliveries DROP CONSTRAINT notification_deliveries_pkey;
ALTER TABLE notification_deliveries DROP COLUMN id;
ALTER TABLE notification_deliveries
    DROP CONSTRAINT notification_deliveries_notification_id_channel_target_key,
    ADD PRIMARY KEY (notification_id, channel, target);
