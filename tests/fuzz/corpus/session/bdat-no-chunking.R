#!R
220 mx.example ESMTP Postfix

~~
EHLO client.example

~~
250-mx.example
250-PIPELINING
250-SIZE 10240000
250-STARTTLS
250-AUTH PLAIN LOGIN CRAM-MD5
250-ENHANCEDSTATUSCODES
250-8BITMIME
250 SMTPUTF8

~~
NOOP
BDAT 66 LAST
MAIL FROM:<spammer@example.com>
RCPT TO:<bob@example.net>
DATA

~~
500 5.5.1 Error: unknown command
250 2.1.0 Ok
250 2.1.5 Ok
354 End data with <CR><LF>.<CR><LF>

~~
Subject: hidden

smuggled
.
QUIT

~~
250 2.0.0 Ok
221 Bye
