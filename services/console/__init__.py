"""The console (issue 15): web pages for users and administrators, served by
``mailexec serve console``. It keeps no data: every page is built from the other
services' REST APIs, called with the signed-in person's own token."""
