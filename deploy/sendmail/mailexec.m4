divert(-1)dnl
dnl # mailexec for sendmail 8: two LMTP mailers (TCP, Unix socket) first, the pipe to
dnl # `mailexec submit` second, and a map of full addresses that routes single accounts.
dnl # (m4 reads every line of this file: comments here start with dnl, which m4 skips
dnl # unread, so quotes and macro names in them are harmless.)
dnl #
dnl # Install: copy to /etc/mail/m4/mailexec.m4; in sendmail.mc, after the MAILER lines, add
dnl #     include(`/etc/mail/m4/mailexec.m4')dnl
dnl # (and FEATURE(`mailertable') before the MAILER lines to route whole domains), rebuild
dnl # sendmail.cf (Debian: make -C /etc/mail; elsewhere m4 sendmail.mc > sendmail.cf) and
dnl # restart sendmail. sendmail.mc.example shows the lines in place.
dnl #
dnl # Routing (both forms give the mailer and its host as mailer:host, like mailertable):
dnl # - a whole domain, in /etc/mail/mailertable (FEATURE(`mailertable')):
dnl #       prog.example.org    mailexec:[127.0.0.1]
dnl # - single accounts in any domain, in /etc/mail/mailexec-recipients (this file's map,
dnl #   looked up with the FULL address before aliases, virtusertable and local delivery):
dnl #       bob@example.org     mailexec:[127.0.0.1]
dnl #   then: makemap hash /etc/mail/mailexec-recipients < /etc/mail/mailexec-recipients
dnl # A routed domain must not be in class w (local-host-names), and mail from outside
dnl # needs it in relay-domains (or the access map) to be accepted at all.
dnl #
dnl # Why these flags (cf/README, op.me "M -- Define Mailer"):
dnl #   R=EnvToSMTP  keeps the recipient's domain: $u and RCPT TO are bob@example.org.
dnl #                EnvToL (the local mailer's) strips it to "bob", which mailexec refuses.
dnl #   S=EnvFromSMTP/HdrFromSMTP  the sender as on the wire (the LMTP mailers send MAIL
dnl #                FROM:<> for the null sender by themselves).
dnl #   S=EnvFromMailexec (the pipe)  $g for --from=: empty for the null sender. sendmail hands
dnl #                a prog mailer its own bounces with the sender MAILER-DAEMON, which
dnl #                EnvFromSMTP and EnvFromL qualify to MAILER-DAEMON@host: mailexec would take
dnl #                that for a real address and send it DSNs. This ruleset empties it first.
dnl #   m  (LMTP mailers) several recipients of one message in one LMTP transaction, with
dnl #      one reply each. Not on the pipe: one submit run per recipient, so that its exit
dnl #      status (67 unknown account) is that recipient's and not every recipient's.
dnl #   u  keep upper case in local parts (without it sendmail lowercases $u).
dnl #   n  no "From " line in front of the message; D F M  Date:, From:, Message-Id: if missing.
dnl #   q  VRFY answers 250.  z  LMTP (LHLO, one reply per recipient after DATA).
dnl #   X  dot-stuffing for the LMTP mailers.  0  no MX lookups for the host in mailer:host.
dnl #   8  pass 8-bit data to the pipe unchanged (no MIME 8-to-7 conversion).
dnl #   No l (local) flag: mailexec is not the mailbox. With l, sendmail would report
dnl #   NOTIFY=SUCCESS as "delivered" itself; without it, it passes NOTIFY/ORCPT/RET/ENVID
dnl #   on to mailexec's LMTP (which advertises DSN) and mailexec reports once its programs
dnl #   ran. No P (Return-Path:): the executor adds Return-Path itself.
dnl # What ingest answers per recipient (RFC 2033): 250 stored and queued; 550 5.1.1 unknown
dnl # account and 550 5.3.0 no program delivery bounce; 451/452 (database, broker or policy
dnl # down) and connection failures queue the message for a later try. Nothing is lost.
divert(0)dnl
LOCAL_CONFIG
# mailexec: program-delivery recipients by full address, value mailer:host
Kmailexec hash -o /etc/mail/mailexec-recipients
LOCAL_RULE_0
# mailexec: look up local@domain (with or without the trailing dot of canonify) and
# resolve it with MailerToTriple, exactly as a mailertable entry; else leave it alone.
R$+ < @ $+ . >		$: $1 < @ $2 . > $| $1 @ $2
R$+ < @ $+ >		$: $1 < @ $2 > $| $1 @ $2
R$+ $| $+		$: $(mailexec $2 $: NOMATCH $) $| $1
R$~[ : $* $| $+		$@ $>MailerToTriple < $1 : $2 > $3
R$* $| $+		$: $2
LOCAL_RULESETS
# mailexec: envelope sender for the pipe mailer; the null sender and $n (mailer-daemon) become
# empty (--from=), every other sender is rewritten as by EnvFromSMTP.
SEnvFromMailexec
R<@>			$@
R$n			$@
R$n < @ $* >		$@
R$*			$@ $>EnvFromSMTP $1
MAILER_DEFINITIONS
# mailexec: LMTP over TCP to ingest (MAILEXEC_LMTP_PORT 8024) on the host of mailer:host,
# usually [127.0.0.1], which is in MAILEXEC_LMTP_TRUSTED_NETWORKS (no AUTH needed).
Mmailexec,	P=[IPC], F=mnDFMquXz0, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, E=\r\n, L=990,
		T=DNS/RFC822/SMTP, A=TCP $h 8024
# mailexec: LMTP over ingest's Unix socket (MAILEXEC_LMTP_SOCKET); route with mailexecsock:localhost
Mmailexecsock,	P=[IPC], F=mnDFMquXz0, S=EnvFromSMTP/HdrFromSMTP, R=EnvToSMTP, E=\r\n, L=990,
		T=DNS/RFC822/SMTP, A=FILE /run/mailexec/lmtp.sock
# mailexec: without LMTP, the pipe to mailexec submit (sysexits: 0 done, 75 queue and
# retry, 64/65/67/77 bounce with submit's one-line reason); route with mailexecpipe:localhost.
# sendmail runs it without a shell, as U= (an account that can read /etc/mailexec/cli.toml);
# $i, the queue id, makes a retry after a timeout return the message ingest already has.
Mmailexecpipe,	P=/usr/local/bin/mailexec, F=nDFMqu8, S=EnvFromMailexec/HdrFromSMTP, R=EnvToSMTP,
		T=DNS/RFC822/X-Unix, U=mailexec:mailexec,
		A=mailexec submit --from=$g --to=$u --idempotency-key=$i
