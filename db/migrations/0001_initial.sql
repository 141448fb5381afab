-- Sessions, their participants and their final transcript segments.
-- Deleting a session removes everything under it (ON DELETE CASCADE), in one statement.

CREATE TABLE sessions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Unguessable, URL-safe; also the LiveKit room name. Knowing it is the capability to join.
    slug              text        NOT NULL UNIQUE CHECK (slug ~ '^[A-Za-z0-9_-]{16,128}$'),
    title             text        NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    languages         text[]      NOT NULL DEFAULT '{}',
    code_switching    boolean     NOT NULL DEFAULT false,
    custom_vocabulary text[]      NOT NULL DEFAULT '{}',
    allow_guests      boolean     NOT NULL DEFAULT true,
    created_by        text,
    status            text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz
);

-- Keyset pagination, newest first.
CREATE INDEX sessions_created_at_id_idx ON sessions (created_at DESC, id DESC);

CREATE TABLE participants (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id   bigint      NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    identity     text        NOT NULL CHECK (identity <> ''),
    display_name text,
    role         text        NOT NULL DEFAULT 'guest' CHECK (role IN ('host', 'guest')),
    user_id      text,
    joined_at    timestamptz,
    left_at      timestamptz,
    CONSTRAINT participants_session_identity_key UNIQUE (session_id, identity)
);

CREATE TABLE transcript_segments (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id     bigint           NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    participant_id bigint           NOT NULL REFERENCES participants (id) ON DELETE CASCADE,
    track_sid      text             NOT NULL DEFAULT '',
    -- The agent's id for one final utterance: a replayed final never makes a second row.
    segment_key    text             NOT NULL,
    text           text             NOT NULL,
    language       text,
    started_at     timestamptz      NOT NULL,
    ended_at       timestamptz      NOT NULL,
    confidence     double precision,
    words          jsonb            NOT NULL DEFAULT '[]'::jsonb,
    CONSTRAINT transcript_segments_session_key_key UNIQUE (session_id, segment_key)
);

-- The transcript in spoken order.
CREATE INDEX transcript_segments_order_idx ON transcript_segments (session_id, started_at, ended_at, id);
-- Cascades from participants.
CREATE INDEX transcript_segments_participant_idx ON transcript_segments (participant_id);
