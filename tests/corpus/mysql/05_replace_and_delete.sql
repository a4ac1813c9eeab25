REPLACE INTO settings (name, value) VALUES ('theme', 'dark');
DELETE FROM sessions WHERE expires_at < NOW() LIMIT 1000;
