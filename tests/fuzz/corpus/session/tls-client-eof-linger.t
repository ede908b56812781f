#!t


~~
STARTTLS

~~

