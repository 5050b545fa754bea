-- SAR: one treatment course per patient and unit (issue 14). Keys of the old scheme named the
-- joint (`register|unit|patient|<joint>|form`, one episode per joint); the course scheme names
-- the course (`register|unit|patient|course|form`). Carry every existing key over so nothing
-- is sent again: per patient and unit the episode with the earliest first visit (then joint
-- name) becomes the course; the keys of its other joint episodes stay as they were, and the
-- next run retracts them (the register holds one course, not one per joint).
-- Written once for SQLite and PostgreSQL alike (the same text is in postgres/migrations).

CREATE TEMP TABLE sar_course_keys (
    old_episode TEXT PRIMARY KEY,
    new_episode TEXT NOT NULL
);

INSERT INTO sar_course_keys (old_episode, new_episode)
SELECT old_episode, new_episode FROM (
    SELECT episode_key AS old_episode,
           substr(episode_key, 1, length(episode_key) - length(joint) - 1) || '|course' AS new_episode,
           ROW_NUMBER() OVER (
               PARTITION BY substr(episode_key, 1, length(episode_key) - length(joint) - 1)
               ORDER BY first_visit_date, joint
           ) AS n
    FROM sar_episodes
    WHERE joint <> '' AND joint <> 'course'
      AND substr(episode_key, length(episode_key) - length(joint)) = '|' || joint
) ranked
WHERE n = 1;

UPDATE records
SET idem_key = (SELECT k.new_episode FROM sar_course_keys k
                WHERE k.old_episode = substr(records.idem_key, 1, length(records.idem_key) - length(records.form) - 1)) || '|' || form
WHERE EXISTS (SELECT 1 FROM sar_course_keys k
              WHERE k.old_episode = substr(records.idem_key, 1, length(records.idem_key) - length(records.form) - 1)
                AND records.idem_key = k.old_episode || '|' || records.form);

UPDATE registrations
SET idem_key = (SELECT k.new_episode FROM sar_course_keys k
                WHERE k.old_episode = substr(registrations.idem_key, 1, length(registrations.idem_key) - length(registrations.form) - 1)) || '|' || form
WHERE EXISTS (SELECT 1 FROM sar_course_keys k
              WHERE k.old_episode = substr(registrations.idem_key, 1, length(registrations.idem_key) - length(registrations.form) - 1)
                AND registrations.idem_key = k.old_episode || '|' || registrations.form);

UPDATE worklist
SET idem_key = (SELECT k.new_episode FROM sar_course_keys k
                WHERE k.old_episode = substr(worklist.idem_key, 1, length(worklist.idem_key) - length(worklist.form) - 1)) || '|' || form
WHERE EXISTS (SELECT 1 FROM sar_course_keys k
              WHERE k.old_episode = substr(worklist.idem_key, 1, length(worklist.idem_key) - length(worklist.form) - 1)
                AND worklist.idem_key = k.old_episode || '|' || worklist.form);

-- Attempts follow their record.
UPDATE attempts
SET idem_key = (SELECT r.idem_key FROM records r WHERE r.id = attempts.record_id)
WHERE EXISTS (SELECT 1 FROM records r WHERE r.id = attempts.record_id AND r.idem_key <> attempts.idem_key);

-- Episode rows are rewritten by the next run; carry the survivors, drop the rest.
DELETE FROM sar_episodes
WHERE joint <> '' AND joint <> 'course'
  AND substr(episode_key, length(episode_key) - length(joint)) = '|' || joint
  AND episode_key NOT IN (SELECT old_episode FROM sar_course_keys);

UPDATE sar_episodes
SET episode_key = (SELECT k.new_episode FROM sar_course_keys k WHERE k.old_episode = sar_episodes.episode_key)
WHERE episode_key IN (SELECT old_episode FROM sar_course_keys);

DROP TABLE sar_course_keys;
