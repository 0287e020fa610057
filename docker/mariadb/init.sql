-- Run once by the mariadb image on an empty data directory (both clusters): the user
-- shardgate logs in as and the sample schema of docker/shardgate/vschema.toml.
CREATE USER IF NOT EXISTS 'shardgate'@'%' IDENTIFIED BY 'shardgate';
GRANT ALL PRIVILEGES ON *.* TO 'shardgate'@'%' WITH GRANT OPTION;

CREATE DATABASE IF NOT EXISTS app;
CREATE TABLE IF NOT EXISTS app.messages (
  workspace_id BIGINT UNSIGNED NOT NULL,
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  body TEXT NOT NULL,
  created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (workspace_id, id),
  KEY (id)
);

CREATE DATABASE IF NOT EXISTS main;
CREATE TABLE IF NOT EXISTS main.settings (
  name VARCHAR(64) PRIMARY KEY,
  value VARCHAR(255) NOT NULL
);
