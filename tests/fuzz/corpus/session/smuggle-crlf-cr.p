#!p
220 smtp-sink ESMTP

~~
ehlo client.example

~~
250-smtp-sink
250-PIPELINING
250-8BITMIME
250-AUTH PLAIN LOGIN
250-XCLIENT NAME HELO
250-XFORWARD NAME ADDR PROTO HELO
250-ENHANCEDSTATUSCODES
250-DSN
250 

~~
mail FROM:<alice@example.com>

~~
250 2.1.0 Ok

~~
rcpt TO:<bob@example.net>

~~
250 2.1.5 Ok

~~
data

~~
354 End data with <CR><LF>.<CR><LF>

~~
Subject: smuggling

first
.MAIL FROM:<evil@example.com>
RCPT TO:<victim@example.net>
DATA
Subject: hidden

smuggled
.

~~
250 2.0.0 Ok

~~
QUIT

~~
221 Bye
