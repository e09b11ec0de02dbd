-- Facts every instance of a deployment must share, made once by the first instance that needs
-- them and read by the rest: the MQTT session's client id (so that two deployments on one broker
-- never share a session), the aggregate resolutions (so that instances never keep windows of
-- different sets). Kept in PostgreSQL, the deployment's durable store: Redis may lose them.
CREATE TABLE deployment (
    name text PRIMARY KEY,
    value text NOT NULL
);
