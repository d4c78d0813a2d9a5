-- gridtower's schema before migrations (main at dfc9b16), as sqlite got it
CREATE TABLE activity (
	id INTEGER NOT NULL, 
	production_id INTEGER NOT NULL, 
	site VARCHAR(100) NOT NULL, 
	bucket BIGINT NOT NULL, 
	kind VARCHAR(40) NOT NULL, 
	code INTEGER NOT NULL, 
	count BIGINT NOT NULL, 
	events BIGINT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_activity_production_bucket ON activity (production_id, bucket);

CREATE INDEX ix_activity_site_bucket ON activity (site, bucket);

CREATE TABLE factorydecision (
	id INTEGER NOT NULL, 
	site VARCHAR(100) NOT NULL, 
	queue VARCHAR(100) NOT NULL, 
	at DATETIME NOT NULL, 
	demand INTEGER NOT NULL, 
	pending INTEGER NOT NULL, 
	running INTEGER NOT NULL, 
	draining INTEGER NOT NULL, 
	submit INTEGER NOT NULL, 
	cancel INTEGER NOT NULL, 
	note VARCHAR(1000) NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_factorydecision_site_queue_id ON factorydecision (site, queue, id);

CREATE TABLE jobevent (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	production_id INTEGER NOT NULL, 
	from_state VARCHAR(20) NOT NULL, 
	to_state VARCHAR(20) NOT NULL, 
	at DATETIME NOT NULL, 
	reason VARCHAR(500) NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_jobevent_job_id_id ON jobevent (job_id, id);

CREATE TABLE jobtally (
	id INTEGER NOT NULL, 
	production_id INTEGER NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	jobs BIGINT NOT NULL, 
	events BIGINT NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_jobtally_production_state ON jobtally (production_id, state);

CREATE TABLE notification (
	id INTEGER NOT NULL, 
	production_id INTEGER NOT NULL, 
	event VARCHAR(40) NOT NULL, 
	occurrence VARCHAR(100) NOT NULL, 
	target VARCHAR(100) NOT NULL, 
	payload JSON NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	tries INTEGER NOT NULL, 
	next_try_at DATETIME, 
	lease_until DATETIME, 
	lease_owner VARCHAR(64), 
	last_error VARCHAR(500), 
	created_at DATETIME NOT NULL, 
	sent_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (production_id, event, occurrence, target)
);

CREATE INDEX ix_notification_state_next_try ON notification (state, next_try_at);

CREATE TABLE pilot (
	id VARCHAR(64) NOT NULL, 
	site VARCHAR(100) NOT NULL, 
	queue VARCHAR(100) NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	batch_id VARCHAR(100), 
	slots INTEGER NOT NULL, 
	walltime INTEGER NOT NULL, 
	host VARCHAR(255), 
	log_path VARCHAR(1000), 
	message VARCHAR(500), 
	submitted_at DATETIME NOT NULL, 
	registered_at DATETIME, 
	heartbeat_at DATETIME, 
	ended_at DATETIME, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_pilot_site_state ON pilot (site, state);

CREATE TABLE presence (
	name VARCHAR(20) NOT NULL, 
	since DATETIME NOT NULL, 
	seen DATETIME NOT NULL, 
	PRIMARY KEY (name)
);

CREATE TABLE production (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	parent VARCHAR(200), 
	state VARCHAR(20) NOT NULL, 
	priority INTEGER NOT NULL, 
	"group" VARCHAR(100) NOT NULL, 
	trial_jobs INTEGER NOT NULL, 
	full_run BOOLEAN NOT NULL, 
	requested_by VARCHAR(300), 
	decided_by VARCHAR(300), 
	decided_at DATETIME, 
	decision_note VARCHAR(1000), 
	trial_report JSON, 
	queue VARCHAR(100) NOT NULL, 
	events_total BIGINT NOT NULL, 
	events_per_job INTEGER NOT NULL, 
	dataset VARCHAR(300) NOT NULL, 
	template_hash VARCHAR(64) NOT NULL, 
	spec JSON NOT NULL, 
	origins JSON NOT NULL, 
	inputs JSON, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE UNIQUE INDEX ix_production_name ON production (name);

CREATE TABLE queuemessage (
	id INTEGER NOT NULL, 
	queue VARCHAR(200) NOT NULL, 
	body JSON NOT NULL, 
	leased_until DATETIME, 
	lease_owner VARCHAR(64), 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_queuemessage_queue_lease ON queuemessage (queue, leased_until, id);

CREATE TABLE retrydecision (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	production_id INTEGER NOT NULL, 
	attempt INTEGER NOT NULL, 
	actor VARCHAR(200) NOT NULL, 
	policy VARCHAR(100), 
	rule VARCHAR(100), 
	outcome VARCHAR(40), 
	action VARCHAR(40) NOT NULL, 
	passive BOOLEAN NOT NULL, 
	delay INTEGER NOT NULL, 
	reason VARCHAR(500) NOT NULL, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_retrydecision_job_id ON retrydecision (job_id);

CREATE INDEX ix_retrydecision_production_id ON retrydecision (production_id, id);

CREATE TABLE sitehealth (
	site VARCHAR(100) NOT NULL, 
	cooldown_until DATETIME NOT NULL, 
	reason VARCHAR(1000) NOT NULL, 
	since DATETIME NOT NULL, 
	PRIMARY KEY (site)
);

CREATE TABLE sitequeue (
	site VARCHAR(100) NOT NULL, 
	queue VARCHAR(100) NOT NULL, 
	last_error VARCHAR(1000), 
	last_error_at DATETIME, 
	PRIMARY KEY (site, queue)
);

CREATE TABLE stagein (
	lfn VARCHAR(1000) NOT NULL, 
	destination VARCHAR(100) NOT NULL, 
	done BOOLEAN NOT NULL, 
	tries INTEGER NOT NULL, 
	next_try_at DATETIME, 
	last_error VARCHAR(500), 
	requested_at DATETIME NOT NULL, 
	PRIMARY KEY (lfn, destination)
);

CREATE TABLE dataset (
	id INTEGER NOT NULL, 
	name VARCHAR(300) NOT NULL, 
	production_id INTEGER, 
	meta JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(production_id) REFERENCES production (id)
);

CREATE UNIQUE INDEX ix_dataset_name ON dataset (name);

CREATE TABLE job (
	id INTEGER NOT NULL, 
	production_id INTEGER NOT NULL, 
	"index" INTEGER NOT NULL, 
	seed BIGINT NOT NULL, 
	first_event BIGINT NOT NULL, 
	events INTEGER NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	priority INTEGER NOT NULL, 
	site VARCHAR(100), 
	queue VARCHAR(100) NOT NULL, 
	attempt INTEGER NOT NULL, 
	not_before DATETIME, 
	message VARCHAR(500), 
	walltime INTEGER, 
	memory INTEGER, 
	only_site VARCHAR(100), 
	avoid_sites JSON, 
	budget_from INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (production_id, "index"), 
	FOREIGN KEY(production_id) REFERENCES production (id)
);

CREATE INDEX ix_job_grown_walltime ON job (walltime) WHERE walltime IS NOT NULL;

CREATE INDEX ix_job_production_state ON job (production_id, state);

CREATE INDEX ix_job_site_state ON job (site, state);

CREATE INDEX ix_job_state_priority ON job (state, priority, id);

CREATE TABLE attempt (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	number INTEGER NOT NULL, 
	pilot_id VARCHAR(64), 
	site VARCHAR(100) NOT NULL, 
	outcome VARCHAR(40), 
	exit_code INTEGER, 
	signal INTEGER, 
	reason VARCHAR(500), 
	started_at DATETIME NOT NULL, 
	heartbeat_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	log_tail TEXT, 
	max_rss_mb INTEGER, 
	PRIMARY KEY (id), 
	UNIQUE (job_id, number), 
	FOREIGN KEY(job_id) REFERENCES job (id)
);

CREATE INDEX ix_attempt_job_id ON attempt (job_id);

CREATE INDEX ix_attempt_pilot_id ON attempt (pilot_id);

CREATE INDEX ix_attempt_running_heartbeat ON attempt (ended_at, heartbeat_at);

CREATE TABLE catalog_file (
	id INTEGER NOT NULL, 
	dataset_id INTEGER NOT NULL, 
	lfn VARCHAR(1000) NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	size BIGINT NOT NULL, 
	adler32 VARCHAR(8) NOT NULL, 
	events INTEGER, 
	job_id INTEGER, 
	attempt INTEGER NOT NULL, 
	meta JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (job_id, name), 
	FOREIGN KEY(dataset_id) REFERENCES dataset (id), 
	UNIQUE (lfn), 
	FOREIGN KEY(job_id) REFERENCES job (id)
);

CREATE INDEX ix_catalog_file_dataset_lfn ON catalog_file (dataset_id, lfn);

CREATE TABLE output (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	attempt INTEGER NOT NULL, 
	name VARCHAR(255) NOT NULL, 
	source VARCHAR(2000) NOT NULL, 
	size BIGINT NOT NULL, 
	adler32 VARCHAR(8) NOT NULL, 
	staged BOOLEAN NOT NULL, 
	copied JSON, 
	tries INTEGER NOT NULL, 
	next_try_at DATETIME, 
	lease_until DATETIME, 
	lease_owner VARCHAR(64), 
	last_error VARCHAR(500), 
	PRIMARY KEY (id), 
	UNIQUE (job_id, attempt, name), 
	FOREIGN KEY(job_id) REFERENCES job (id)
);

CREATE INDEX ix_output_job_id ON output (job_id);

CREATE INDEX ix_output_staged ON output (staged);

CREATE TABLE replica (
	id INTEGER NOT NULL, 
	file_id INTEGER NOT NULL, 
	destination VARCHAR(100) NOT NULL, 
	path VARCHAR(1000) NOT NULL, 
	url VARCHAR(2000) NOT NULL, 
	state VARCHAR(20) NOT NULL, 
	checked_at DATETIME, 
	error VARCHAR(500), 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (file_id, destination), 
	FOREIGN KEY(file_id) REFERENCES catalog_file (id)
);
